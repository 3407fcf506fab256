"""Configuration mistakes are clear errors before training: misspelled bindings (with the
nearest valid names), undefined macros, missing data bindings, and a model_dir whose run had a
different operative config (unless --allow_config_change)."""

import os
import re
import shutil
import subprocess

import pytest

from rethink_tf import config
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.training import distribute, run_config
from rethink_tf.training.task import detection_trainer

from conftest import REPO_ROOT, TINY_TRAIN

TINY = "gin_configs/testing/tiny.gin"


def test_misspelled_parameter_in_a_file_names_file_line_and_the_right_name(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text(f'include "{TINY}"\nbuild_model.widht_multiplier = 0.5\n')
  with pytest.raises(config.ConfigError) as err:
    config.parse_gin([str(bad)])
  text = str(err.value)
  assert "Configurable 'build_model' doesn't have a parameter named 'widht_multiplier'" in text
  assert "(did you mean build_model.width_multiplier?)" in text
  assert f'In file "{bad}", line 2' in text


def test_misspelled_configurable_in_a_param_names_the_binding():
  with pytest.raises(config.ConfigError) as err:
    config.parse_gin([TINY], ["TrainConfg.seed = 3"])
  text = str(err.value)
  assert "No configurable matching 'TrainConfg' (did you mean TrainConfig, " in text
  assert "TrainConfg.seed = 3" in text


@pytest.mark.parametrize("param, message", [
    ("InputConfig.short_side = %SHORT", "the macro %SHORT is used but never bound"),
    ("TrainConfig.seed = 'x' 3", "TrainConfig.seed = 'x' 3"),
])
def test_undefined_macro_and_syntax_error(param, message):
  with pytest.raises(config.ConfigError, match=re.escape(message)):
    config.parse_gin([TINY], [param])


def test_missing_data_bindings_are_named_before_a_model_is_built(tmp_path):
  config.parse_gin([
      "gin_configs/base/mask_rcnn_small.gin", "gin_configs/norm/gn.gin",
      "gin_configs/init/scratch.gin", "gin_configs/schedule/demo.gin", "gin_configs/run/cpu.gin"
  ])
  with pytest.raises(config.ConfigError,
                     match=r"InputConfig.train_pattern, "
                     r"InputConfig.val_pattern, InputConfig.val_annotations, "
                     r"InputConfig.category_ids must be bound"):
    InputConfig().prepare()
  with pytest.raises(config.ConfigError,
                     match=r"InputConfig.train_pattern = '/nowhere/"
                     r"train-\*.tfrecord' matches no file"):
    InputConfig(train_pattern="/nowhere/train-*.tfrecord",
                val_pattern="/nowhere/val",
                val_annotations="/nowhere/a.json",
                category_ids=(1,)).prepare()
  # Evaluation needs no training shards.
  with pytest.raises(config.ConfigError, match=r"InputConfig.val_pattern = '/nowhere/val'"):
    InputConfig(val_pattern="/nowhere/val", val_annotations="/nowhere/a.json",
                category_ids=(1,)).prepare(training=False)


def test_bindings_parse_multiline_values_and_changes_ignore_resumable_ones():
  previous = ("# Parameters for build_model:\nbuild_model.norm = 'GN'\n"
              "build_model.sizes = (1, 2,\n    3, 4)\nTrainConfig.stop_at_step = 10\n"
              "TrainConfig.seed = 0\n")
  current = ("build_model.norm = 'BN'\nbuild_model.sizes = (1, 2, 3, 4)\n"
             "TrainConfig.stop_at_step = 20\nTrainConfig.seed = 0\nTrainConfig.new_param = 1\n")
  assert run_config.bindings(previous)["build_model.sizes"] == "(1, 2, 3, 4)"
  assert run_config.config_changes(previous, current) == [("build_model.norm", "'GN'", "'BN'")]


def test_a_model_dir_with_another_config_is_refused_then_allowed(tmp_path, tiny_reference_run,
                                                                 capsys):
  ref_dir, ref = tiny_reference_run
  assert ref.returncode == 0, ref.stderr[-2000:]
  model_dir = tmp_path / "run"
  shutil.copytree(ref_dir, model_dir)
  before = sorted(os.listdir(model_dir))
  operative = (model_dir / "operative_config.gin").read_text()
  r = subprocess.run(TINY_TRAIN + [
      f"--model_dir={model_dir}", "--gin_param=nx_schedule.base_lr_per_16 = 0.04",
      "--gin_param=InputConfig.flip = False", "--gin_param=TrainConfig.eval_every_steps = 5"
  ],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=600)
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
  assert (f"error: {model_dir} holds a run with a different operative config (2 binding(s) "
          "changed):\n  InputConfig.flip: True -> False\n  nx_schedule.base_lr_per_16: 0.08 "
          "-> 0.04\n") in r.stderr
  assert "--allow_config_change" in r.stderr and "Traceback" not in r.stderr
  assert "step " not in r.stdout  # no training step ran
  assert sorted(os.listdir(model_dir)) == before  # and nothing was written
  assert (model_dir / "operative_config.gin").read_text() == operative

  # Allowed: the changes are printed and recorded, the run resumes (here at its end).
  config.parse_gin([TINY], ["nx_schedule.base_lr_per_16 = 0.04", "InputConfig.flip = False"])
  detection_trainer(str(model_dir), distribute.get_strategy("one_device"),
                    allow_config_change=True).train()
  out = capsys.readouterr().out
  assert re.search(
      r"config changed when resuming from .*ckpt-20 \(--allow_config_change\):\n"
      r"  InputConfig.flip: True -> False\n  nx_schedule.base_lr_per_16: 0.08 -> "
      r"0.04", out)
  assert "nothing to do: checkpoint is at step 20" in out
  assert "InputConfig.flip: True -> False" in (model_dir / "config_changes.txt").read_text()
