"""The package's import layers: a module imports from its own package or from lower layers only,
so a wrong-way import (evaluation -> training, data -> modeling, ...) fails here, in CI.

Command-line programs (modules that define `console_main`) are entry points: they sit on top
whatever package holds them (a converter in `checkpoint/` parses gin through `config`).
"""

import ast
import os

from conftest import REPO_ROOT

# Lowest first. Packages of one layer are peers: neither imports the other.
LAYERS = (
    ("errors", "run_files", "console"),  # what everything raises, writes and how it logs
    ("layers",),  # tensor ops: boxes, anchors, RoIAlign, NMS, norms
    ("data", "modeling"),  # the input pipeline; the architecture
    ("checkpoint",),  # initialization, warm start, weight import and conversion
    ("detector", "evaluation"),  # the gin-built detector; COCO evaluation
    ("inference", "training"),  # a restored detector; the training loop and tasks
    ("config", "flags"),  # gin parsing (registers every configurable); common flags
    ("serving", "tools", "train", "evaluate", "pretrain", "__init__"),  # programs
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
TOP = len(LAYERS) - 1


def _modules():
  root = os.path.join(REPO_ROOT, "rethink_tf")
  for directory, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(directory, f)
        yield os.path.relpath(path, REPO_ROOT), path


def _unit(module: str) -> str:
  """'rethink_tf.evaluation.tta' -> 'evaluation'; 'rethink_tf.errors' -> 'errors'."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rethink_tf"):
      if node.module == "rethink_tf":  # from rethink_tf import config
        yield from (f"rethink_tf.{a.name}" for a in node.names)
      else:
        yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith("rethink_tf"))


def _is_program(tree) -> bool:
  return any(isinstance(n, ast.FunctionDef) and n.name == "console_main" for n in tree.body)


def layering_violations():
  """'file: imports module (layer a -> layer b)' for every import against the layers."""
  out = []
  for rel, path in _modules():
    module = rel[:-3].replace(os.sep, ".")
    unit = _unit(module) if not rel.endswith("rethink_tf/__init__.py") else "__init__"
    assert unit in RANK, f"{rel}: package {unit!r} has no layer in tests/test_layering.py"
    tree = ast.parse(open(path).read(), rel)
    rank = TOP if _is_program(tree) else RANK[unit]
    for imported in _imports(tree):
      target = _unit(imported)
      if target == unit:
        continue
      if RANK.get(target, TOP) >= rank:
        out.append(f"{rel}: imports {imported} ({unit}, layer {rank} -> {target}, layer "
                   f"{RANK.get(target, TOP)})")
  return out


def test_imports_follow_the_layers():
  violations = layering_violations()
  assert not violations, "wrong-way imports:\n" + "\n".join(violations)


def _closure(module: str):
  """Every project module `module` imports, transitively (packages' __init__ included)."""
  seen, todo = set(), [module]
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    base = os.path.join(REPO_ROOT, *m.split("."))
    path = base + ".py" if os.path.exists(base + ".py") else os.path.join(base, "__init__.py")
    if not os.path.exists(path):  # `from package import name`: name is not a module
      continue
    todo.extend(_imports(ast.parse(open(path).read(), path)))
  return seen


def test_the_training_loop_knows_no_model():
  """The generic loop and its hooks import nothing from modeling/ (the tasks do)."""
  for module in ("rethink_tf.training.trainer", "rethink_tf.training.hooks"):
    closure = _closure(module)
    assert not [m for m in closure if m.startswith("rethink_tf.modeling")], sorted(closure)
    assert "rethink_tf.training.task" not in closure
