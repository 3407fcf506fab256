"""Every gin file parses and finalizes; experiment files follow the header and include rules."""

import glob
import os
import re

import gin
import pytest

from rethink_tf import config
from rethink_tf.checkpoint import init as init_lib
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.training.schedules import nx_schedule
from rethink_tf.training.train_config import TrainConfig

from conftest import REPO_ROOT

ALL = sorted(
    os.path.relpath(p, REPO_ROOT)
    for p in glob.glob(os.path.join(REPO_ROOT, "gin_configs", "**", "*.gin"), recursive=True))
HEADED = [p for p in ALL if p.split(os.sep)[1] in ("paper", "demo", "testing")]
# Detection experiments (one include per axis) vs the pre-training and study stages.
EXPERIMENTS = [
    p for p in HEADED if open(os.path.join(REPO_ROOT, p)).readline().startswith(
        "# COMMAND: python -m rethink_tf.train ")
]
STAGES = [p for p in HEADED if p not in EXPERIMENTS]
AXES = ("base", "norm", "init", "schedule", "data", "run")
# init/pretrained.gin marks the backbone checkpoint %gin.REQUIRED: every file including it is
# parsed with one.
CHECKPOINT = "init_config.checkpoint = '/backbones/r50'"


def test_there_are_gin_files():
  assert len(ALL) >= 15 and "gin_configs/demo/shapes_scratch.gin" in ALL


@pytest.mark.parametrize("path", ALL)
def test_parses_and_finalizes(path):
  params = [CHECKPOINT] if _needs_checkpoint(path) else []
  if path.endswith("schedule/nx.gin"):  # experiments bind num_x after including it
    params.append("nx_schedule.num_x = 3")
  config.parse_gin([path], params)
  assert gin.config_is_locked()
  # The bound values are usable by the configurables they name.
  InputConfig()
  TrainConfig()
  init_lib.init_config()
  if "nx_schedule.num_x" in open(os.path.join(REPO_ROOT, path)).read():
    assert nx_schedule(global_batch_size=TrainConfig().global_batch_size).total_steps > 0
  gin.clear_config()


def _needs_checkpoint(path):
  text = open(os.path.join(REPO_ROOT, path)).read()
  return path.endswith("init/pretrained.gin") or 'include "gin_configs/init/pretrained.gin"' in text


@pytest.mark.parametrize("path", [p for p in ALL if _needs_checkpoint(p)])
def test_pretrained_checkpoint_is_required(path):
  with pytest.raises(config.ConfigError,
                     match=r"init_config.checkpoint must be given .*"
                     r"--gin_param=\"init_config.checkpoint = '...'\""):
    config.parse_gin([path])
  gin.clear_config()


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_header_and_one_include_per_axis(path):
  text = open(os.path.join(REPO_ROOT, path)).read()
  assert text.startswith("# COMMAND: python -m rethink_tf.train"), "header must give the command"
  assert "# Reproduces:" in text
  includes = re.findall(r'^include "gin_configs/(\w+)/', text, re.M)
  assert sorted(includes) == sorted(AXES), includes


@pytest.mark.parametrize("path", STAGES)
def test_stage_files_give_their_command(path):
  """Pre-training files include a detection config (their backbone is its backbone); study
  files include nothing and name the gin files of each stage."""
  text = open(os.path.join(REPO_ROOT, path)).read()
  first = text.splitlines()[0]
  assert "# Reproduces:" in text
  if first.startswith("# COMMAND: python -m rethink_tf.pretrain "):
    assert re.search(r'^include "gin_configs/', text, re.M) and "PretrainConfig." in text
  elif first.startswith("# COMMAND: python -m rethink_tf.tools.study --quick "):
    # The short variant: bindings over the study file (the command adds it after that file).
    assert "include" not in text and "StudyConfig." in text
  else:
    assert first.startswith("# COMMAND: python -m rethink_tf.tools.study "), first
    assert "include" not in text and "StudyConfig.detection_gin_files" in text


def test_stage_files_exist():
  assert {
      "gin_configs/demo/pretrain.gin", "gin_configs/demo/study.gin",
      "gin_configs/demo/study_quick.gin"
  } <= set(STAGES)


@pytest.mark.parametrize("path", [p for p in ALL if p.split(os.sep)[1] in AXES])
def test_axis_files_include_nothing(path):
  assert "include" not in open(os.path.join(REPO_ROOT, path)).read()


def test_unknown_binding_is_an_error():
  with pytest.raises(ValueError, match="build_model"):
    config.parse_gin(["gin_configs/testing/tiny.gin"], ["build_model.nrom = 'GN'"])


def test_missing_gin_file_is_named():
  with pytest.raises(ValueError, match="no_such.gin"):
    config.parse_gin(["gin_configs/no_such.gin"])
