"""Pastes box-relative instance masks into the image (detectron2's `paste_masks_in_image` rule).

Each image pixel (y, x) takes the bilinear sample of its box's M x M mask at the pixel centre,
with zeros outside the mask: mask coordinate u = (x + 0.5 - x0) / (x1 - x0) * M - 0.5. Bilinear
interpolation is separable, so one instance is `Wy @ mask @ Wx^T` with per-axis weight matrices
Wy [H, M], Wx [W, M] (two small matmuls instead of a per-pixel gather). Evaluation and the exported
SavedModel both paste with this function, so served masks equal evaluated ones.
"""

import tensorflow as tf


def _axis_weights(lo, hi, length, canvas: int, m: int):
  """Bilinear weights [N, canvas, m] of the m mask cells for every pixel centre along one axis.

  lo, hi: [N] box edges in pixels; length: scalar, pixels beyond it (canvas padding) get 0.
  """
  centres = tf.range(canvas, dtype=tf.float32) + 0.5
  extent = tf.maximum(hi - lo, 1e-6)  # a zero-width box pastes nothing, not NaN
  u = (centres[None, :] - lo[:, None]) / extent[:, None] * m - 0.5
  cells = tf.range(m, dtype=tf.float32)
  # max(0, 1 - |u - i|) is the bilinear (tent) weight; cells outside 0..m-1 are the zero padding.
  w = tf.maximum(0.0, 1.0 - tf.abs(u[:, :, None] - cells[None, None, :]))
  inside = tf.cast(centres < tf.cast(length, tf.float32), tf.float32)
  return w * inside[None, :, None]


def paste_masks(masks, boxes_yxyx, height, width, canvas_height=None, canvas_width=None):
  """Box-relative mask probabilities -> image-resolution probabilities.

  Args:
    masks: [N, M, M] float probabilities, each relative to its box.
    boxes_yxyx: [N, 4] float boxes in image pixels (continuous coordinates, x1 exclusive).
    height, width: int scalars (may be tensors), the image size.
    canvas_height, canvas_width: output size (default: the image size); pixels at or beyond
      height/width are 0 (batches of images of different sizes share one canvas).
  Returns:
    [N, canvas_height, canvas_width] float32 probabilities (threshold them with >= 0.5 for the
    binary masks COCO evaluation uses).
  """
  masks = tf.cast(masks, tf.float32)
  boxes = tf.cast(boxes_yxyx, tf.float32)
  m = masks.shape[-1]
  ch = height if canvas_height is None else canvas_height
  cw = width if canvas_width is None else canvas_width
  wy = _axis_weights(boxes[:, 0], boxes[:, 2], height, ch, m)
  wx = _axis_weights(boxes[:, 1], boxes[:, 3], width, cw, m)
  rows = tf.linalg.matmul(wy, masks)  # [N, H, M]
  return tf.linalg.matmul(rows, wx, transpose_b=True)  # [N, H, W]
