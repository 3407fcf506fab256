"""Library modules log through absl logging (a caller can silence or redirect it); `print`
stays in the programs' `main` / `console_main` (`rethink_tf/console.py` shows the logs)."""

import ast
import os

from conftest import REPO_ROOT

PROGRAM_FUNCTIONS = ("main", "console_main")


def prints_outside_programs():
  """'file:line in function' for every print call of the package outside a program's main."""
  out = []
  for directory, _, files in os.walk(os.path.join(REPO_ROOT, "rethink_tf")):
    for f in sorted(files):
      if not f.endswith(".py"):
        continue
      path = os.path.join(directory, f)
      tree = ast.parse(open(path).read(), path)
      program = any(isinstance(n, ast.FunctionDef) and n.name == "console_main" for n in tree.body)
      for top in tree.body:
        name = getattr(top, "name", "<module>")
        if program and name in PROGRAM_FUNCTIONS:
          continue
        for node in ast.walk(top):
          if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
            out.append(f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno} in {name}")
  return out


def test_library_modules_do_not_print():
  found = prints_outside_programs()
  assert not found, "print outside a program's main (log with absl logging):\n" + "\n".join(found)
