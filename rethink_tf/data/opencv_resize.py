"""Detectron's test-time resize in the graph: `prep_im_for_blob`'s scale rule and OpenCV's
`cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)` on the float image.

Detectron (`utils/blob.py`) subtracts the pixel means from the float32 image and resizes it by
one scale factor `s`, not to a size: OpenCV then maps output pixel d to source coordinate
(d + 0.5) / s - 0.5, where `tf.image.resize` uses the ratio of the sizes (which differs from s
once the size is rounded: 640 -> 1067 at s = 5/3 drifts 0.2 pixel across the row). Bilinear
weights are float32, clamped at the borders, rows first then columns, as OpenCV computes them
for float images.
"""

import tensorflow as tf


def detectron_scale(h, w, short, max_size):
  """`prep_im_for_blob`'s scale: short side to `short` unless the long side would then round
  above `max_size`. Returns (scale float64 scalar, output size int32 [2] as OpenCV rounds
  `side * scale`, half to even)."""
  h, w = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  scale = tf.cast(short, tf.float64) / tf.minimum(h, w)
  longest = tf.maximum(h, w)
  scale = tf.where(
      tf.round(scale * longest) > tf.cast(max_size, tf.float64),
      tf.cast(max_size, tf.float64) / longest, scale)
  return scale, tf.cast(tf.round(tf.stack([h, w]) * scale), tf.int32)


def _axis(in_size, out_size, scale):
  """Source index pairs and float32 weights of one axis: ([out] lo, [out] hi, [out] weight of
  hi), OpenCV's `resizeGeneric_` for INTER_LINEAR."""
  d = tf.cast(tf.range(out_size), tf.float64)
  f = tf.cast((d + 0.5) / scale - 0.5, tf.float32)  # OpenCV: (float)((d + 0.5) * (1 / s) - 0.5)
  s = tf.cast(tf.floor(f), tf.int32)
  frac = f - tf.floor(f)
  low = s < 0
  high = s >= in_size - 1
  frac = tf.where(tf.logical_or(low, high), 0.0, frac)
  s = tf.where(low, 0, tf.where(high, in_size - 1, s))
  return s, tf.minimum(s + 1, in_size - 1), frac


def opencv_linear_resize(image, scale, out_h, out_w):
  """cv2.resize(image, None, fx=scale, fy=scale, INTER_LINEAR) of a float32 [H, W, C] image.

  Returns float32 [out_h, out_w, C].
  """
  image = tf.cast(image, tf.float32)
  shape = tf.shape(image)
  x0, x1, fx = _axis(shape[1], out_w, scale)
  y0, y1, fy = _axis(shape[0], out_h, scale)
  # Horizontal interpolation of every source row, then the vertical blend of two rows.
  fx = fx[None, :, None]
  rows = tf.gather(image, x0, axis=1) * (1.0 - fx) + tf.gather(image, x1, axis=1) * fx
  fy = fy[:, None, None]
  return tf.gather(rows, y0, axis=0) * (1.0 - fy) + tf.gather(rows, y1, axis=0) * fy
