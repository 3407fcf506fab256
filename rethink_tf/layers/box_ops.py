"""Box utilities. Boxes are `boxes_yxyx` ([y1, x1, y2, x2], pixels) unless the name says otherwise.

Encoding/decoding and IoU come from Model Garden (`official.vision.ops.box_ops`); this module
adds the few things it lacks and holds the one conversion to COCO's `xywh`.

Coordinates are continuous (a box's width is x2 - x1, detectron2 and Model Garden) unless a
function is given `plus_one=1`: Detectron's legacy convention, where boxes hold inclusive
pixel indices, a width is x2 - x1 + 1 and boxes clip to [0, w - 1] (`utils/boxes.py`:
`bbox_transform`, `bbox_transform_inv`, `clip_tiled_boxes`). Converted Detectron models run
with it; everything else uses 0.
"""

import numpy as np
import tensorflow as tf
from official.vision.ops import box_ops as mg_box_ops


def encode_boxes(boxes, anchors, weights=None, plus_one: float = 0.0):
  """Targets (dy, dx, dh, dw) of [..., 4] boxes w.r.t. anchors (scaled by `weights`)."""
  if not plus_one:
    return mg_box_ops.encode_boxes(boxes, anchors, weights)
  one = tf.constant([0.0, 0.0, plus_one, plus_one], anchors.dtype)
  return mg_box_ops.encode_boxes(tf.cast(boxes, anchors.dtype) + one, anchors + one, weights)


def decode_boxes(deltas, anchors, weights=None, plus_one: float = 0.0):
  """Boxes [..., 4] from deltas (dy, dx, dh, dw) on anchors; dh, dw clamped at log(1000/16).

  With `plus_one`, Detectron's rule: an inclusive box [y1, y2] is the continuous [y1, y2 + 1],
  decoded as such and mapped back (its "- 1" on the far corner)."""
  if not plus_one:
    return mg_box_ops.decode_boxes(deltas, anchors, weights)
  one = tf.constant([0.0, 0.0, plus_one, plus_one], anchors.dtype)
  return mg_box_ops.decode_boxes(deltas, anchors + one, weights) - one


def clip_boxes(boxes_yxyx, image_size, plus_one: float = 0.0):
  """Clips [..., 4] boxes to [0, h] x [0, w] ([0, h - 1] x [0, w - 1] with `plus_one`);
  image_size broadcastable to [..., 2] (h, w)."""
  image_size = tf.cast(image_size, boxes_yxyx.dtype) - plus_one
  h, w = image_size[..., 0:1], image_size[..., 1:2]
  y1, x1, y2, x2 = tf.split(boxes_yxyx, 4, axis=-1)
  return tf.concat([
      tf.clip_by_value(y1, 0.0, h),
      tf.clip_by_value(x1, 0.0, w),
      tf.clip_by_value(y2, 0.0, h),
      tf.clip_by_value(x2, 0.0, w)
  ],
                   axis=-1)


def pairwise_iou(boxes_a, boxes_b):
  """IoU between [B, N, 4] and [B, M, 4] -> [B, N, M]; no +1 on widths (detectron2)."""
  a = boxes_a[..., :, None, :]
  b = boxes_b[..., None, :, :]
  ih = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
  iw = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
  inter = ih * iw
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / tf.maximum(area_a + area_b - inter, 1e-8)


def intersection_over_first(boxes_a, boxes_b):
  """Intersection / area(a) between [B, N, 4] and [B, M, 4] -> [B, N, M] (crowd overlap)."""
  a = boxes_a[..., :, None, :]
  b = boxes_b[..., None, :, :]
  ih = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
  iw = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  return ih * iw / tf.maximum(area_a, 1e-8)


def yxyx_to_coco_xywh(boxes_yxyx: np.ndarray) -> np.ndarray:
  """The single conversion to COCO's [x, y, width, height] (numpy, host side)."""
  b = np.asarray(boxes_yxyx, dtype=np.float64)
  return np.stack([b[..., 1], b[..., 0], b[..., 3] - b[..., 1], b[..., 2] - b[..., 0]], axis=-1)
