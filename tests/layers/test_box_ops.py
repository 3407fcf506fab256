"""Box coding: continuous (detectron2 / Model Garden) and Detectron's "+1" convention, each
against the source's formula written out in numpy."""

import numpy as np
import tensorflow as tf

from rethink_tf.layers import box_ops

CLAMP = np.log(1000.0 / 16)


def _detectron_decode(boxes_xyxy, deltas, weights):
  """Detectron `utils/boxes.py:bbox_transform` ("+1" widths, the "- 1" far corner)."""
  w = boxes_xyxy[:, 2] - boxes_xyxy[:, 0] + 1.0
  h = boxes_xyxy[:, 3] - boxes_xyxy[:, 1] + 1.0
  cx, cy = boxes_xyxy[:, 0] + 0.5 * w, boxes_xyxy[:, 1] + 0.5 * h
  wx, wy, ww, wh = weights
  dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
  dw, dh = np.minimum(deltas[:, 2] / ww, CLAMP), np.minimum(deltas[:, 3] / wh, CLAMP)
  pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, np.exp(dw) * w, np.exp(dh) * h
  return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw - 1, pcy + 0.5 * ph - 1], 1)


def _detectron2_decode(boxes_xyxy, deltas, weights):
  """detectron2 `Box2BoxTransform.apply_deltas` (continuous widths)."""
  w, h = boxes_xyxy[:, 2] - boxes_xyxy[:, 0], boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
  cx, cy = boxes_xyxy[:, 0] + 0.5 * w, boxes_xyxy[:, 1] + 0.5 * h
  wx, wy, ww, wh = weights
  dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
  dw, dh = np.minimum(deltas[:, 2] / ww, CLAMP), np.minimum(deltas[:, 3] / wh, CLAMP)
  pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, np.exp(dw) * w, np.exp(dh) * h
  return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)


def _random(rng, n=64):
  xy = rng.uniform(0, 200, (n, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, 120, (n, 2))], 1)  # xyxy
  deltas = rng.normal(0, 1, (n, 4)) * [1, 1, 3, 3]  # (dx, dy, dw, dh)
  deltas[:4, 2:] = 20.0  # hits the clamp
  return boxes.astype(np.float32), deltas.astype(np.float32)


def _yxyx(xyxy):
  return xyxy[..., [1, 0, 3, 2]]


def test_decode_follows_each_sources_formula():
  rng = np.random.default_rng(0)
  boxes, deltas = _random(rng)
  ours_deltas = deltas[:, [1, 0, 3, 2]]  # (dy, dx, dh, dw)
  for plus_one, reference in ((0.0, _detectron2_decode), (1.0, _detectron_decode)):
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
      ours = box_ops.decode_boxes(tf.constant(ours_deltas), tf.constant(_yxyx(boxes)),
                                  [weights[1], weights[0], weights[3], weights[2]], plus_one)
      np.testing.assert_allclose(ours.numpy(),
                                 _yxyx(reference(boxes, deltas, weights)),
                                 rtol=1e-5,
                                 atol=1e-3)


def test_plus_one_encode_inverts_decode_and_clip_keeps_inclusive_pixels():
  rng = np.random.default_rng(1)
  anchors, deltas = _random(rng)
  deltas = np.clip(deltas, -2.0, 2.0)  # inside the clamp, where decoding is invertible
  anchors, targets = tf.constant(_yxyx(anchors)), tf.constant(deltas[:, [1, 0, 3, 2]])
  boxes = box_ops.decode_boxes(targets, anchors, None, plus_one=1.0)
  np.testing.assert_allclose(box_ops.encode_boxes(boxes, anchors, None, plus_one=1.0).numpy(),
                             targets.numpy(),
                             atol=1e-4)
  # Detectron clips inclusive boxes to [0, w - 1]; continuous ones go to [0, w].
  big = tf.constant([[-5.0, -5.0, 500.0, 700.0]])
  np.testing.assert_array_equal(
      box_ops.clip_boxes(big, [100.0, 200.0], 1.0).numpy(), [[0, 0, 99, 199]])
  np.testing.assert_array_equal(box_ops.clip_boxes(big, [100.0, 200.0]).numpy(), [[0, 0, 100, 200]])
