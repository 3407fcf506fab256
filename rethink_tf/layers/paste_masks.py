"""Pastes box-relative instance masks into the image (detectron2's `paste_masks_in_image` rule).

Each image pixel (y, x) takes the bilinear sample of its box's M x M mask at the pixel centre,
with zeros outside the mask: mask coordinate u = (x + 0.5 - x0) / (x1 - x0) * M - 0.5. Bilinear
interpolation is separable, so one instance is `Wy @ mask @ Wx^T` with per-axis weight matrices
Wy [H, M], Wx [W, M] (two small matmuls instead of a per-pixel gather). Evaluation and the exported
SavedModel both paste with this function, so served masks equal evaluated ones.
"""

import tensorflow as tf


def _axis_weights(lo, hi, length, canvas, m: int, start=0):
  """Bilinear weights [N, canvas, m] of the m mask cells for every pixel centre along one axis.

  lo, hi: [N] box edges in pixels; length: scalar, pixels beyond it (canvas padding) get 0;
  start: the first pixel's index (a window of the axis: pixels start .. start + canvas - 1).
  """
  centres = tf.cast(tf.range(start, start + canvas), tf.float32) + 0.5
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


def paste_window(mask, box_yxyx, height, width):
  """One mask pasted only where it can reach 0.5: its box widened by one pixel on each side
  (detectron2's CPU paste window), clipped to the image.

  Outside the window every pasted probability is below 0.5 (a pixel centre outside the box is
  less than half a cell from the mask's zero padding), so thresholded masks are the same as
  `paste_masks` at full size, at the cost of the box instead of the image.

  Args:
    mask: [M, M] float probabilities relative to the box; box_yxyx: [4] float, image pixels.
    height, width: int32 scalars, the image size.
  Returns:
    (probabilities [h, w] float32 of the window's pixels, y0, x0 int32: the window's first row
    and column in the image).
  """
  box = tf.cast(box_yxyx, tf.float32)
  m = mask.shape[-1]

  def span(lo, hi, length):
    start = tf.clip_by_value(tf.cast(tf.floor(lo), tf.int32) - 1, 0, length)
    stop = tf.clip_by_value(tf.cast(tf.math.ceil(hi), tf.int32) + 1, start, length)
    return start, stop - start

  y0, h = span(box[0], box[2], height)
  x0, w = span(box[1], box[3], width)
  wy = _axis_weights(box[None, 0], box[None, 2], height, h, m, start=y0)
  wx = _axis_weights(box[None, 1], box[None, 3], width, w, m, start=x0)
  rows = tf.linalg.matmul(wy, tf.cast(mask, tf.float32)[None])  # [1, h, M]
  return tf.linalg.matmul(rows, wx, transpose_b=True)[0], y0, x0
