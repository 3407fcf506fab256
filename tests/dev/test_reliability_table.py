"""docs/reliability.md is the generated table, and every row's test exists and asserts the
row's evidence."""

import ast
import os
import subprocess
import sys

from dev import reliability_table
from rethink_tf.data.coco_validation import PROBLEMS

from conftest import REPO_ROOT


def test_committed_page_is_the_generated_one():
  with open(os.path.join(REPO_ROOT, reliability_table.DOC)) as f:
    assert f.read() == reliability_table.render(), (
        "docs/reliability.md is stale: python -m dev.reliability_table "
        "> docs/reliability.md")
  for kind in PROBLEMS:
    assert f"| `{kind}` |" in reliability_table.render()


def test_every_row_names_an_existing_test_that_asserts_its_evidence():
  cases = reliability_table.all_cases()
  assert len(cases) >= len(PROBLEMS) + 20
  for case in cases:
    path, name = case.test.split("::")
    source = open(os.path.join(REPO_ROOT, path)).read()
    functions = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert name in functions and name.startswith("test_"), case.test
    assert case.evidence in source, (case.test, case.evidence)


def test_check_flag_passes_on_the_committed_page():
  r = subprocess.run([sys.executable, "-m", "dev.reliability_table", "--check"],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
