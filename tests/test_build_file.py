"""The Bazel BUILD file covers every module, entry point and test."""

import ast
import glob
import os

from conftest import REPO_ROOT

RULES = ("py_library", "py_binary", "py_test", "filegroup")


def _targets():
  """Parses BUILD as Starlark (a Python subset): [(rule, name, srcs, main)]."""
  tree = ast.parse(open(os.path.join(REPO_ROOT, "BUILD")).read(), "BUILD")
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in RULES:
      kw = {k.arg: k.value for k in node.keywords}
      srcs = []
      if "srcs" in kw:
        value = kw["srcs"]
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "glob":
          for pattern in ast.literal_eval(value.args[0]):
            srcs += [
                os.path.relpath(p, REPO_ROOT)
                for p in glob.glob(os.path.join(REPO_ROOT, pattern), recursive=True)
            ]
        else:
          srcs = ast.literal_eval(value)
      out.append((node.func.id, ast.literal_eval(kw["name"]), srcs))
  return out


def _python_files(*dirs):
  files = []
  for d in dirs:
    files += [
        os.path.relpath(p, REPO_ROOT)
        for p in glob.glob(os.path.join(REPO_ROOT, d, "**", "*.py"), recursive=True)
    ]
  return sorted(files)


def test_every_module_and_test_has_a_target():
  targets = _targets()
  covered = {s for _, _, srcs in targets for s in srcs}
  missing = [
      f for f in _python_files("rethink_tf", "export", "tests", "benchmarks")
      if f not in covered and not f.endswith("__init__.py")
  ]
  assert not missing, f"BUILD has no target for {missing}"
  names = [n for _, n, _ in targets]
  assert len(names) == len(set(names)), "duplicate target names"


def test_tests_are_py_test_and_entry_points_are_binaries():
  targets = _targets()
  kinds = {s: rule for rule, _, srcs in targets for s in srcs}
  for f in _python_files("tests"):
    if os.path.basename(f).startswith("test_"):
      assert kinds.get(f) == "py_test", f
  for entry in ("rethink_tf/train.py", "rethink_tf/evaluate.py",
                "rethink_tf/tools/model_summary.py", "rethink_tf/data/coco_tfrecord.py",
                "rethink_tf/evaluation/coco_evaluator.py"):
    assert any(rule == "py_binary" and entry in srcs for rule, _, srcs in targets), entry


def test_gin_files_are_in_a_filegroup():
  gins = {s for rule, _, srcs in _targets() if rule == "filegroup" for s in srcs}
  all_gin = {
      os.path.relpath(p, REPO_ROOT)
      for p in glob.glob(os.path.join(REPO_ROOT, "gin_configs", "**", "*.gin"), recursive=True)
  }
  assert all_gin and all_gin <= gins


def test_build_is_generated_from_the_import_graph():
  """BUILD is what dev/gen_build.py writes from today's imports (a new import, module or test
  without regenerating it fails here), and its deps are the real ones."""
  from dev import gen_build
  assert open(os.path.join(REPO_ROOT, "BUILD")).read() == gen_build.generate(), (
      "BUILD is stale: regenerate it with python -m dev.gen_build")
  modules = {gen_build.module_name(f): f for f in gen_build.python_files()}
  deps = gen_build.imported_modules("rethink_tf/training/trainer.py", modules)
  assert "rethink_tf.training.hooks" in deps and "rethink_tf.training.task" not in deps
  assert {"rethink_tf.training.task", "rethink_tf.training.trainer"} <= gen_build.imported_modules(
      "rethink_tf/training/task.py", modules) | {"rethink_tf.training.task"}
  # A test depends on the programs it runs in a subprocess (directly or through conftest's).
  assert "rethink_tf.evaluation.coco_evaluator" in gen_build.imported_modules(
      "tests/evaluation/test_coco_evaluator.py", modules)
  assert "rethink_tf.train" in gen_build.imported_modules("tests/conftest.py", modules)


def test_py_tests_run_their_pytest_file():
  tree = ast.parse(open(os.path.join(REPO_ROOT, "BUILD")).read(), "BUILD")
  tests = [
      node for node in ast.walk(tree)
      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "py_test"
  ]
  assert tests
  for node in tests:
    kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    test_file = kw["srcs"][0]
    assert kw["main"] == "tests/pytest_main.py" and kw["args"] == [f"$(location {test_file})"]
