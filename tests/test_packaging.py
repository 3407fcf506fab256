"""The installed distribution: one top-level package and a command for every program."""

import ast
import glob
import os
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO_ROOT


def _scripts():
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def test_every_command_runs_a_console_main_of_the_package():
  scripts = _scripts()
  assert {"rethink-tf-train", "rethink-tf-evaluate", "rethink-tf-export",
          "rethink-tf-predict"} <= set(scripts)
  for name, target in scripts.items():
    module, function = target.split(":")
    assert module.split(".")[0] == "rethink_tf", name
    path = os.path.join(REPO_ROOT, *module.split(".")) + ".py"
    tree = ast.parse(open(path).read())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


def test_the_wheel_installs_only_rethink_tf(tmp_path):
  r = subprocess.run([
      sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
      str(tmp_path), REPO_ROOT
  ],
                     capture_output=True,
                     text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  (wheel,) = glob.glob(str(tmp_path / "*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert tops == {"rethink_tf"}
  assert "rethink_tf/serving/detection_server.py" in names
  entry_points = zipfile.ZipFile(wheel).read(
      next(n for n in names if n.endswith("entry_points.txt"))).decode()
  assert "rethink-tf-export = rethink_tf.serving.export_saved_model:console_main" in entry_points
