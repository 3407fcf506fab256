"""detectron2's test-time resize in the graph: `ResizeShortestEdge`'s size rule and Pillow's
bilinear filter on the uint8 image, bit for bit.

detectron2 resizes the decoded uint8 image with `PIL.Image.resize(..., BILINEAR)` and
normalizes afterwards. Pillow's filter is not `tf.image.resize`'s: it widens its support by the
shrink factor (an antialiasing filter when shrinking), computes its coefficients in double
precision, rounds them to 22-bit fixed point, and resamples in two passes (horizontal, then
vertical), each rounding its result to uint8. A converted detectron2 model sees exactly
detectron2's input only when all of that is reproduced; this module does it with integer
arithmetic (exact) and float64 coefficients computed in the same order of operations as
Pillow's `precompute_coeffs` (libImaging/Resample.c).
"""

import tensorflow as tf

# Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2 bits.
_PRECISION_BITS = 22


def detectron2_output_size(h, w, short, max_size):
  """`ResizeShortestEdge.get_output_shape` in float64: the short side to `short`, the long
  side then capped at `max_size`, each side rounded as `int(x + 0.5)`.

  Args: h, w: int or float scalars (the decoded size); short, max_size: scalars.
  Returns: int32 [2] (new_h, new_w).
  """
  h = tf.cast(h, tf.float64)
  w = tf.cast(w, tf.float64)
  size = tf.cast(short, tf.float64)
  scale = size / tf.minimum(h, w)
  new_h = tf.where(h < w, size, scale * h)
  new_w = tf.where(h < w, scale * w, size)
  longest = tf.maximum(new_h, new_w)
  cap = tf.cast(max_size, tf.float64) / longest
  new_h = tf.where(longest > tf.cast(max_size, tf.float64), new_h * cap, new_h)
  new_w = tf.where(longest > tf.cast(max_size, tf.float64), new_w * cap, new_w)
  # int() truncates toward zero; the values are positive.
  return tf.cast(tf.floor(tf.stack([new_h, new_w]) + 0.5), tf.int32)


def _coefficients(in_size, out_size):
  """Pillow's bilinear `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.

  Returns (first input index [out] int32, fixed-point weights [out, K] int32, K int32 scalar);
  taps past an output's own support have weight 0.
  """
  in_f = tf.cast(in_size, tf.float64)
  scale = in_f / tf.cast(out_size, tf.float64)
  filterscale = tf.maximum(scale, 1.0)
  support = filterscale  # the bilinear filter's support is 1
  ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
  center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
  ss = 1.0 / filterscale
  # C's (int) truncates toward zero: values below 0 become 0 either way after the clamp.
  xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
  xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin
  taps = tf.range(ksize)
  x = tf.cast(taps[None, :] + xmin[:, None], tf.float64)
  w = tf.maximum(1.0 - tf.abs((x - center[:, None] + 0.5) * ss), 0.0)
  w = tf.where(taps[None, :] < xmax[:, None], w, 0.0)
  # The weights' sum in Pillow's order (a sequential loop over the taps): float64 addition is
  # not associative, and the last bit of the sum can move a coefficient's rounding.
  ww = tf.while_loop(lambda j, acc: j < ksize, lambda j, acc: (j + 1, acc + w[:, j]),
                     (tf.constant(0), tf.zeros_like(center)))[1]
  k = tf.where(ww[:, None] != 0.0, w / ww[:, None], w)
  fixed = tf.cast(tf.floor(0.5 + k * float(1 << _PRECISION_BITS)), tf.int32)
  return xmin, fixed, ksize


def _resample_axis(image, out_size, axis: int):
  """One of Pillow's 8-bit passes along `axis` (0 rows, 1 columns) of int32 [H, W, C]."""
  in_size = tf.shape(image)[axis]
  xmin, weights, ksize = _coefficients(in_size, out_size)
  out_shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
  acc = tf.fill(out_shape, tf.constant(1 << (_PRECISION_BITS - 1), tf.int32))

  def tap(j, acc):
    index = tf.minimum(xmin + j, in_size - 1)
    picked = tf.gather(image, index, axis=axis)
    wj = weights[:, j]
    wj = wj[:, None, None] if axis == 0 else wj[None, :, None]
    return j + 1, acc + picked * wj

  acc = tf.while_loop(lambda j, acc: j < ksize, tap, (tf.constant(0), acc))[1]
  # Pillow's clip8: the arithmetic shift, then clamped to [0, 255].
  return tf.clip_by_value(tf.bitwise.right_shift(acc, _PRECISION_BITS), 0, 255)


def pil_bilinear_resize(image, out_h, out_w):
  """`PIL.Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR)`, bit for bit (Pillow
  13, the pinned version).

  Args:
    image: uint8 [H, W, C] (any channel order: the filter treats channels alike).
    out_h, out_w: int32 scalars (>= 1).
  Returns:
    uint8 [out_h, out_w, C].
  """
  x = tf.cast(image, tf.int32)
  shape = tf.shape(x)
  in_h, in_w = shape[0], shape[1]

  # Pillow skips a pass whose axis keeps its size (the pass would be the identity anyway).
  def rows(x):
    return tf.cond(tf.equal(in_h, out_h), lambda: x, lambda: _resample_axis(x, out_h, 0))

  def columns(x):
    return tf.cond(tf.equal(in_w, out_w), lambda: x, lambda: _resample_axis(x, out_w, 1))

  # Each pass rounds to uint8, so the order changes the result. Pillow 13 resamples the rows
  # first when the height shrinks by more than twice as many pixels as the width
  # (`ImagingResampleInner`); otherwise the columns first (Pillow before 13: always).
  rows_first = tf.logical_and(in_h - out_h > 0, in_h - out_h > (in_w - out_w) * 2)
  x = tf.cond(rows_first, lambda: columns(rows(x)), lambda: rows(columns(x)))
  return tf.cast(x, tf.uint8)
