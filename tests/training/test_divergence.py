"""A non-finite loss never reaches the weights: the run skips or stops with the step, every
loss term and the last good checkpoint named, and that checkpoint resumes training."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.modeling.mask_rcnn import MaskRCNN
from rethink_tf.training import distribute
from rethink_tf.training import task as task_lib

# Loops of up to 4 steps, checkpoints at 4 and 8, logs every 5: the first poisoned step (3)
# is in the middle of a loop call, the second (7) too.
PARAMS = [
    "TrainConfig.checkpoint_every_steps = 4", "TrainConfig.steps_per_loop = 4",
    "TrainConfig.log_every_steps = 5", "TrainConfig.skip_nonfinite_steps = 1",
    "TrainConfig.stop_at_step = 10"
]
POISONED_STEPS = (3, 7)


def _trainer(model_dir):
  config.parse_gin(["gin_configs/testing/tiny.gin"], PARAMS)
  return task_lib.detection_trainer(model_dir, distribute.get_strategy("one_device"))


def _poison_losses(monkeypatch, holder):
  """Makes the box loss (and so the total) NaN at POISONED_STEPS (1-based step numbers)."""
  real = MaskRCNN.compute_losses

  def poisoned(self, outputs, batch, global_sum=None):
    losses = dict(real(self, outputs, batch, global_sum))
    step = holder["trainer"].optimizer.iterations + 1
    bad = tf.reduce_any(tf.equal(step, tf.constant(POISONED_STEPS, tf.int64)))
    nan = tf.where(bad, tf.constant(float("nan")), tf.constant(0.0))
    losses["fast_rcnn_box_loss"] += nan
    losses["total_loss"] += nan
    return losses

  monkeypatch.setattr(MaskRCNN, "compute_losses", poisoned)


def test_nan_loss_is_skipped_then_stops_naming_step_terms_and_last_good_checkpoint(
    tmp_path, monkeypatch, capsys):
  model_dir = str(tmp_path / "run")
  holder = {}
  _poison_losses(monkeypatch, holder)
  holder["trainer"] = t = _trainer(model_dir)
  with pytest.raises(FloatingPointError) as err:
    t.train()
  message = str(err.value)
  out = capsys.readouterr().out
  # Step 3: skipped with a warning (1 of 1 allowed); step 7: the second, the run stops.
  assert re.search(
      r"warning: non-finite loss at step 3 \(.*\): the step's update was not "
      r"applied; skipped \(1 of TrainConfig.skip_nonfinite_steps = 1 used\)", out)
  assert message.startswith("non-finite loss at step 7 (")
  for term in ("rpn_cls_loss", "rpn_box_loss", "fast_rcnn_cls_loss", "mask_loss",
               "weight_decay_loss"):
    assert re.search(rf"{term}=[0-9.e+-]+[,)]", message), term  # finite terms, by name
  assert "fast_rcnn_box_loss=nan" in message and "total_loss=nan" in message
  assert f"the last good checkpoint is {model_dir}/ckpt-4, intact" in message
  assert "run stopped (2 non-finite step(s)" in message

  # Nothing after the bad step was saved, the weights in memory never saw a NaN, and the two
  # bad steps advanced the step counter without an update.
  assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, "ckpt-4")
  assert not [n for n in os.listdir(model_dir) if re.match(r"ckpt-[5-9]", n)]
  assert all(np.isfinite(v.numpy()).all() for v in t.model.variables)
  assert int(t.optimizer.iterations.numpy()) == 7 and int(t.task.skipped_steps.numpy()) == 2
  # Training went on after the skipped step 3: step 5 was logged with finite losses.
  assert re.search(r"step 5/10 \| loss [0-9]+\.[0-9]+ ", out)

  # The last good checkpoint restores and training continues (no poison this time).
  monkeypatch.undo()
  config.parse_gin(["gin_configs/testing/tiny.gin"], PARAMS)
  resumed = task_lib.detection_trainer(model_dir, distribute.get_strategy("one_device"))
  resumed.train()
  out = capsys.readouterr().out
  assert f"resumed from {model_dir}/ckpt-4 at step 4" in out
  assert "non-finite" not in out and "step 10/10 | loss" in out
  assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, "ckpt-10")
  assert int(resumed.task.skipped_steps.numpy()) == 1  # step 3's skip, restored from ckpt-4
  assert all(np.isfinite(v.numpy()).all() for v in resumed.model.variables)


def test_a_nan_on_one_replica_skips_the_step_on_every_replica(mirrored_strategy, tmp_path,
                                                              monkeypatch):
  """2 replicas: replica 0's loss is NaN at step 1; both agree not to apply it (weights,
  momentum untouched, step counter advanced), and step 2 applies normally."""
  real = MaskRCNN.compute_losses
  holder = {}

  def poisoned(self, outputs, batch, global_sum=None):
    losses = dict(real(self, outputs, batch, global_sum))
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    bad = tf.logical_and(tf.equal(holder["trainer"].optimizer.iterations, 0), tf.equal(replica, 0))
    losses["total_loss"] += tf.where(bad, tf.constant(float("nan")), tf.constant(0.0))
    return losses

  monkeypatch.setattr(MaskRCNN, "compute_losses", poisoned)
  config.parse_gin(["gin_configs/testing/tiny.gin"], ["TrainConfig.global_batch_size = 2"])
  holder["trainer"] = t = task_lib.detection_trainer(str(tmp_path / "run"), mirrored_strategy)
  step = t.task.replica_step()
  batches = iter(t.task.dataset())
  state = [
      v for v in t.model.trainable_variables + list(t.optimizer.variables)
      if v is not t.optimizer.iterations
  ]  # weights and momentum slots
  assert len(state) > len(t.model.trainable_variables)
  before = [v.numpy().copy() for v in state]
  for expected_applied, expected_moved in ((False, False), (True, True)):
    _, applied = t.strategy.run(step, args=(next(batches),))
    assert {bool(a) for a in t.strategy.experimental_local_results(applied)} == {expected_applied}
    moved = any(not np.array_equal(b, v.numpy()) for b, v in zip(before, state))
    assert moved == expected_moved
  assert int(t.optimizer.iterations.numpy()) == 2 and int(t.task.skipped_steps.numpy()) == 1
