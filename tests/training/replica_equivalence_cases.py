"""Splitting the global batch over replicas changes nothing: 2 replicas x 1 image train exactly
as 1 replica x 2 images (SyncBN vs BN, GN vs GN), step after step.

Run by tests/training/test_replica_equivalence.py in a process without oneDNN's graph
rewrites (see there)."""

import numpy as np
import pytest
import tf_keras

from rethink_tf import config
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer

from conftest import copy_weights, run_steps

RTOL = 1e-5


def _trainer(tmp_path, name, strategy, params):
  config.parse_gin(["gin_configs/testing/tiny.gin"], ["TrainConfig.global_batch_size = 2", *params])
  return detection_trainer(str(tmp_path / name), strategy)


def _assert_same_training(one, two, losses_one, losses_two):
  for a, b in zip(losses_one, losses_two):
    assert a.keys() == b.keys()
    for k in a:
      assert b[k] == pytest.approx(a[k], rel=RTOL, abs=1e-7), (k, a[k], b[k])
  for a, b in zip(one.model.variables, two.model.variables):
    x, y = a.numpy(), b.numpy()
    np.testing.assert_allclose(y,
                               x,
                               rtol=RTOL,
                               atol=RTOL * max(np.abs(x).max(), 1e-3),
                               err_msg=a.name)


@pytest.mark.parametrize("norms", [("BN", "SyncBN"), ("GN", "GN")], ids=["bn_syncbn", "gn"])
def test_two_replicas_of_one_image_equal_one_replica_of_two(norms, tmp_path, mirrored_strategy):
  single_norm, multi_norm = norms
  one = _trainer(tmp_path, "one", distribute.get_strategy("one_device"),
                 [f"build_model.norm = '{single_norm}'"])
  two = _trainer(tmp_path, "two", mirrored_strategy, [f"build_model.norm = '{multi_norm}'"])
  assert two.strategy.num_replicas_in_sync == 2
  copy_weights(one, two)
  losses_one, losses_two = run_steps(one, 1), run_steps(two, 1)
  assert all(np.isfinite(v) for v in losses_one[0].values())
  _assert_same_training(one, two, losses_one, losses_two)
  if single_norm == "BN":  # synchronized layers, whose statistics were updated
    norms = [
        l for l in two.model.backbone.submodules
        if isinstance(l, tf_keras.layers.BatchNormalization)
    ]
    assert norms and all(l.synchronized for l in norms)
    assert all(np.abs(l.moving_mean.numpy()).max() > 0 for l in norms)


def test_mirrored_and_one_device_losses_match_overrun_steps(tmp_path, mirrored_strategy):
  one = _trainer(tmp_path, "one", distribute.get_strategy("one_device"), [])
  two = _trainer(tmp_path, "two", mirrored_strategy, [])
  copy_weights(one, two)
  losses_one, losses_two = run_steps(one, 3), run_steps(two, 3)
  assert losses_one[0]["total_loss"] != losses_one[2]["total_loss"]
  _assert_same_training(one, two, losses_one, losses_two)


def test_two_replicas_equal_one_on_landscape_and_portrait_canvases(tmp_path, mirrored_strategy):
  """Every replica of a step gets the same canvas, so the split still changes nothing."""
  params = [
      "SyntheticDataset.image_sizes = [(48, 96), (96, 48)]", "InputConfig.short_side = 32",
      "InputConfig.max_long_side = 64", "InputConfig.canvas_block_steps = 2"
  ]
  one = _trainer(tmp_path, "one", distribute.get_strategy("one_device"), params)
  two = _trainer(tmp_path, "two", mirrored_strategy, params)
  shapes = {tuple(b["images"].shape[1:3]) for _, b in zip(range(4), one.task.dataset())}
  assert {(32, 64), (64, 32)} <= shapes
  copy_weights(one, two)
  losses_one, losses_two = run_steps(one, 4), run_steps(two, 4)
  _assert_same_training(one, two, losses_one, losses_two)
