"""Runs one pytest file as a Bazel `py_test`: `pytest_main.py tests/<dir>/test_<name>.py`.

Bazel runs it from the test's runfiles tree, which holds the project files the target depends
on and nothing else: the package must be imported from there (not from an installed copy),
or a missing `deps` entry would go unnoticed.
"""

import os
import sys


def main():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  os.chdir(root)
  sys.path.insert(0, root)
  import pytest

  import rethink_tf
  where = os.path.abspath(rethink_tf.__file__)
  if not where.startswith(root + os.sep):
    sys.exit(f"rethink_tf was imported from {where}, not from the runfiles tree {root}")
  sys.exit(pytest.main([sys.argv[1], "-p", "no:cacheprovider", "-q"]))


if __name__ == "__main__":
  main()
