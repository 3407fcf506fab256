"""The XLA-compiled train loop equals the plain step; bfloat16 and float16 mixed precision train
with float32 statistics, logits and losses. The XLA and bfloat16 tests run the tiny model with every
head (Cascade R-CNN's stages, keypoints, masks)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from rethink_tf import config
from rethink_tf.layers.norm import GroupNorm
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer

from conftest import TINY_CASCADE_KEYPOINTS, copy_weights, run_steps


def _trainer(tmp_path, name, params=()):
  config.parse_gin(["gin_configs/testing/tiny.gin"], list(params))
  return detection_trainer(str(tmp_path / name), distribute.get_strategy("one_device"))


def test_xla_train_loop_matches_the_plain_step(tmp_path):
  """The trainer's loop with its step under jit_compile=True (the proof of static shapes:
  forward, gradients and the optimizer update compile as one XLA computation) gives the plain
  step's losses and weights."""
  plain = _trainer(tmp_path, "plain", TINY_CASCADE_KEYPOINTS)
  xla = _trainer(tmp_path, "xla", TINY_CASCADE_KEYPOINTS + ["TrainConfig.jit_compile = True"])
  copy_weights(plain, xla)
  a = run_steps(plain, 1)[0]
  before = [v.numpy().copy() for v in xla.model.trainable_variables]
  losses, done, applied = xla.task.train_function()(iter(xla.task.dataset()), tf.constant(1))
  assert int(done) == 1 and bool(applied)
  b = {k: float(v) for k, v in losses.items()}
  assert set(b) >= {
      "rpn_cls_loss", "rpn_box_loss", "fast_rcnn_cls_loss", "fast_rcnn_box_loss",
      "fast_rcnn_cls_loss_stage3", "mask_loss", "keypoint_loss", "total_loss", "weight_decay_loss"
  }
  assert int(xla.optimizer.iterations.numpy()) == 1
  moved = sum(
      not np.array_equal(u, v.numpy()) for u, v in zip(before, xla.model.trainable_variables))
  assert moved > 0.9 * len(before)
  for k in a:
    assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (k, a[k], b[k])
  for u, v in zip(plain.model.trainable_variables, xla.model.trainable_variables):
    np.testing.assert_allclose(v.numpy(),
                               u.numpy(),
                               rtol=1e-4,
                               atol=1e-4 * max(np.abs(u.numpy()).max(), 1e-3),
                               err_msg=u.name)


@pytest.mark.parametrize("precision,compute", [("mixed_bfloat16", tf.bfloat16),
                                               ("mixed_float16", tf.float16)])
def test_mixed_precision_step(precision, compute, tmp_path):
  every_head = TINY_CASCADE_KEYPOINTS if precision == "mixed_bfloat16" else []
  t = _trainer(tmp_path, precision, every_head + [f"TrainConfig.precision = '{precision}'"])
  assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored after build
  model = t.model
  assert model.backbone.stem.conv.compute_dtype == compute.name
  assert all(v.dtype == tf.float32 for v in model.variables if v is not getattr(
      model.roi_heads, "cascade_active", None))  # the cascade's on/off flag is bool
  for layer in (model.roi_heads.box_predictor.cls_score, model.roi_heads.box_predictor.bbox_pred,
                model.roi_heads.branch("mask").predictor, model.rpn_head.objectness,
                model.rpn_head.deltas):
    assert layer.compute_dtype == "float32", layer.name
  assert isinstance(t.optimizer,
                    tf_keras.mixed_precision.LossScaleOptimizer) == (precision == "mixed_float16")
  before = [v.numpy().copy() for v in model.trainable_variables]
  losses = run_steps(t, 2)
  assert all(np.isfinite(v) for step in losses for v in step.values()), losses
  moved = sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
  assert moved > 0.9 * len(before)
  det = model.detect(tf.zeros([1, 64, 64, 3]), tf.constant([[64.0, 64.0]]))
  assert det["boxes"].dtype == tf.float32 and det["masks"].dtype == tf.float32


def test_group_norm_statistics_are_float32_under_bfloat16():
  layer = GroupNorm(groups=4, epsilon=1e-5, dtype="mixed_bfloat16")
  x = tf.random.normal([2, 4, 4, 8], 3.0, 2.0)
  fn = tf.function(lambda v: layer(v))
  y = fn(x)
  assert y.dtype == tf.bfloat16
  graph = fn.get_concrete_function(x).graph
  means = [op for op in graph.get_operations() if op.type == "Mean"]
  assert means and all(op.get_attr("T") == tf.float32 for op in means)
  ref = GroupNorm(groups=4, epsilon=1e-5)
  ref.build(x.shape)
  np.testing.assert_allclose(y.numpy().astype(np.float32), ref(x).numpy(), atol=0.05)
