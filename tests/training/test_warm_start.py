"""Cascade R-CNN joined late. Warm start: a cascade run starts from a plain run's checkpoint;
every variable the two models share by path and shape is restored (all of backbone, FPN, RPN,
box head, classifier and mask head), the class-agnostic regressor and stages 2-3 keep their
initialization, and the schedule continues at the checkpoint's step. A cascade start step on a
model without cascade stages is refused."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.checkpoint.warm_start import checkpoint_keys
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer


def test_plain_checkpoint_continues_as_cascade(tiny_reference_run, tmp_path, capsys):
  model_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-2000:]
  ckpt = str(model_dir / "ckpt-10")
  config.parse_gin(["gin_configs/testing/tiny.gin"], [
      "build_model.cascade_ious = (0.5, 0.6, 0.7)", "build_model.cascade_start_step = 12",
      f"TrainConfig.warm_start_checkpoint = '{ckpt}'"
  ])
  t = detection_trainer(str(tmp_path / "cascade"), distribute.get_strategy("one_device"))
  assert t.restore_or_initialize() == 10
  assert int(t.optimizer.iterations.numpy()) == 10
  out = capsys.readouterr().out
  assert f"warm start from {ckpt}: restored " in out and "starting at step 10" in out

  reader = tf.train.load_checkpoint(ckpt)
  saved = reader.get_variable_to_shape_map()
  restored, new, other = 0, [], []
  for key, var in checkpoint_keys(t.model, "model").items():
    if key in saved and list(saved[key]) == var.shape.as_list():
      np.testing.assert_array_equal(var.numpy(), reader.get_tensor(key), err_msg=key)
      restored += 1
    else:
      (other if key in saved else new).append(key.replace("/roi_heads/", "/").split("/")[1:3])
  # Everything but the cascade's own variables came from the plain run.
  assert {n[0] for n in new} == {"cascade_box_heads", "cascade_box_predictors",
                                 "cascade_active"}, new
  assert other == [["box_predictor", "bbox_pred"]] * 2  # kernel and bias
  assert restored == len(t.model.variables) - len(new) - len(other)
  assert restored > 100
  assert f"restored {restored} variables" in out
  # The plain run's checkpoint holds every one of its model variables under these keys.
  plain_model_keys = [k for k in saved if k.startswith("model/")]
  assert len(plain_model_keys) == restored + len(other)


def test_a_missing_warm_start_checkpoint_is_named(tmp_path):
  config.parse_gin(["gin_configs/testing/tiny.gin"],
                   [f"TrainConfig.warm_start_checkpoint = '{tmp_path}/nothing/ckpt-5'"])
  t = detection_trainer(str(tmp_path / "run"), distribute.get_strategy("one_device"))
  with pytest.raises(FileNotFoundError, match="nothing/ckpt-5.index does not exist"):
    t.restore_or_initialize()


def test_a_cascade_start_step_without_cascade_stages_is_refused(tmp_path):
  from rethink_tf.errors import ConfigError
  config.parse_gin(["gin_configs/testing/tiny.gin"], ["build_model.cascade_start_step = 5"])
  with pytest.raises(ConfigError, match="cascade_start_step = 5 but the model has no cascade"):
    detection_trainer(str(tmp_path / "run"), distribute.get_strategy("one_device"))
