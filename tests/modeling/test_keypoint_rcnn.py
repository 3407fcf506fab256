"""Keypoint R-CNN in the model: the head's shapes, targets from the sampled RoIs, a finite loss,
and keypoints decoded inside the detected boxes (training end to end, with the loss falling:
tests/training/test_cascade_keypoint_training.py)."""

import numpy as np
import tensorflow as tf
import tf_keras

from rethink_tf import config
from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.modeling.build import build_model

K = 3


def _batch(model):
  """A tiny synthetic batch whose objects get 3 keypoints: the box's top-left and top-right
  corners (visible) and its centre (labeled, hidden)."""
  cfg = InputConfig().prepare()
  batch = next(iter(make_dataset(cfg, True, 2, model.anchor_kwargs, seed=0)))
  y1, x1, y2, x2 = tf.unstack(batch["gt_boxes"], axis=-1)
  valid = tf.cast(batch["gt_classes"] > 0, tf.float32)
  points = tf.stack([
      tf.stack([x1, y1, 2 * valid], -1),
      tf.stack([x2 - 0.01, y1, 2 * valid], -1),
      tf.stack([(x1 + x2) / 2, (y1 + y2) / 2, valid], -1)
  ],
                    axis=2)
  return {**batch, "gt_keypoints": points * valid[..., None, None]}


def test_keypoint_head_trains_and_detects():
  config.parse_gin(["gin_configs/testing/tiny.gin"], [
      f"build_model.num_keypoints = {K}", "build_model.keypoint_head_conv_dim = 32",
      "build_model.keypoint_head_num_conv = 2"
  ])
  model = build_model(num_classes=4, image_size=(64, 64))
  batch = _batch(model)
  optimizer = tf_keras.optimizers.SGD(0.02, momentum=0.9)

  def step():  # eager: cheaper than tracing a step
    with tf.GradientTape() as tape:
      outputs = model(batch, training=True)
      losses = model.compute_losses(outputs, batch)
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(losses["total_loss"], variables), variables))
    return outputs, losses

  outputs, losses = step()
  assert outputs["keypoint_logits"].shape[2:] == (K, 56, 56)
  assert outputs["keypoint_targets"].shape == outputs["keypoint_weights"].shape
  assert float(tf.reduce_sum(outputs["keypoint_weights"])) > 0  # labeled, in fg RoIs
  assert list(losses) == [
      "rpn_cls_loss", "rpn_box_loss", "fast_rcnn_cls_loss", "fast_rcnn_box_loss", "mask_loss",
      "keypoint_loss", "total_loss"
  ]
  assert all(np.isfinite(float(v)) for v in losses.values())
  assert float(losses["keypoint_loss"]) > 0

  det = model.detect(batch["images"], batch["image_size"])
  points, boxes = det["keypoints"].numpy(), det["boxes"].numpy()
  assert points.shape == (*boxes.shape[:2], K, 3)
  y1, x1, y2, x2 = (boxes[..., i:i + 1] for i in range(4))
  assert ((points[..., 0] >= x1 - 1e-3) & (points[..., 0] <= x2 + 1e-3)).all()
  assert ((points[..., 1] >= y1 - 1e-3) & (points[..., 1] <= y2 + 1e-3)).all()


def test_keypoint_head_without_keypoint_data_is_refused_before_training():
  import pytest

  from rethink_tf.detector import build_detector
  from rethink_tf.errors import ConfigError
  config.parse_gin(["gin_configs/testing/tiny.gin"], ["build_model.num_keypoints = 17"])
  with pytest.raises(ConfigError,
                     match=r"build_model.num_keypoints = 17 but "
                     r"InputConfig.keypoint_names names 0 keypoints"):
    build_detector(InputConfig(padded_size=(64, 64)), training=True)
