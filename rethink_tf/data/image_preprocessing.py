"""Image decoding, resizing and normalization shared by the input pipeline (training and
evaluation) and the exported SavedModel: one function per step, so served images are prepared
exactly as evaluated ones."""

from typing import Sequence

import tensorflow as tf

from rethink_tf.data import opencv_resize, pil_resize


def decode_image(encoded, jpeg_dct_method: str = "", expand_animations: bool = True):
  """Encoded JPEG / PNG / GIF / BMP / WebP -> uint8 [H, W, 3] ([N, H, W, 3] for an animated
  GIF with `expand_animations`); JPEGs with `jpeg_dct_method` (see `InputConfig`)."""

  def any_format():
    return tf.io.decode_image(encoded, channels=3, expand_animations=expand_animations)

  if not jpeg_dct_method:
    return any_format()
  return tf.cond(tf.io.is_jpeg(encoded),
                 lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=jpeg_dct_method),
                 any_format)


RESIZE_METHODS = ("tensorflow", "pil", "opencv")


def resize_for_model(image,
                     short_side: int,
                     max_long_side: int,
                     padded_size: Sequence[int],
                     short=None,
                     antialias: bool = False,
                     method: str = "tensorflow"):
  """Resizes to short side `short_side` (or `short`, a jittered one), long side <= max_long_side,
  never beyond `padded_size`. The input pipeline and the exported SavedModel both call this, so
  served images are resized exactly as evaluated ones.

  method: "tensorflow" (`tf.image.resize`'s bilinear in float, `antialias` when shrinking;
    sizes round(side * scale)) or "pil" (detectron2's `ResizeShortestEdge`: its size rule and
    Pillow's bilinear filter on the uint8 image, rounded to uint8; `pil_resize.py`) or
    "opencv" (Detectron's `prep_im_for_blob`: its scale rule and OpenCV's bilinear resize by
    that factor on the float image; `opencv_resize.py`).
  Args:
    image: [H, W, 3] uint8 (or float, "tensorflow" only) (H, W > 0).
  Returns:
    (image [h, w, 3] float32 resized, scale [2] float32 (h / H, w / W: one value twice for
    "tensorflow" and "opencv" (Detectron's factor), each axis's own for "pil", as detectron2
    maps boxes back), size [2] float32
    (h, w)).
  """
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  size, scale = resized_size(h, w, short_side, max_long_side, padded_size, short, method)
  new = tf.cast(size, tf.int32)
  if method == "pil":
    resized = pil_resize.pil_bilinear_resize(tf.cast(image, tf.uint8), new[0], new[1])
    return tf.cast(resized, tf.float32), scale, size
  if method == "opencv":
    factor, _ = opencv_resize.detectron_scale(h, w, short_side if short is None else short,
                                              max_long_side)
    return opencv_resize.opencv_linear_resize(image, factor, new[0], new[1]), scale, size
  # uint8 straight into the resize (same values as casting first): a float copy at the input's
  # resolution would cost 12 bytes per pixel, 145 MB for a 12 MP photo.
  return tf.image.resize(image, new, antialias=antialias), scale, size


def resized_size(h,
                 w,
                 short_side: int,
                 max_long_side: int,
                 padded_size: Sequence[int],
                 short=None,
                 method: str = "tensorflow"):
  """The size `resize_for_model` gives an h x w image, without the image (the training
  pipeline buckets images by it before decoding them).

  Returns (size [2] float32 (h, w), scale [2] float32 (h / H, w / W)).
  """
  h, w = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  if method == "pil":
    new = pil_resize.detectron2_output_size(h, w, short_side if short is None else short,
                                            max_long_side)
    new = tf.minimum(new, tf.constant([int(padded_size[0]), int(padded_size[1])], tf.int32))
    new = tf.maximum(new, 1)  # a 1 x 20000 strip keeps one row (see below)
    scale = tf.cast(tf.cast(new, tf.float64) / tf.cast(tf.stack([h, w]), tf.float64), tf.float32)
    return tf.cast(new, tf.float32), scale
  if method == "opencv":
    factor, new = opencv_resize.detectron_scale(h, w, short_side if short is None else short,
                                                max_long_side)
    new = tf.minimum(new, tf.constant([int(padded_size[0]), int(padded_size[1])], tf.int32))
    new = tf.maximum(new, 1)
    factor = tf.cast(factor, tf.float32)
    return tf.cast(new, tf.float32), tf.stack([factor, factor])
  if method != "tensorflow":
    raise ValueError(f"resize method must be one of {RESIZE_METHODS}, got {method!r}")
  short = tf.constant(float(short_side)) if short is None else short
  scale = tf.minimum(short / tf.minimum(h, w), max_long_side / tf.maximum(h, w))
  scale = tf.minimum(scale, tf.minimum(padded_size[0] / h, padded_size[1] / w))
  # Every side keeps at least one pixel: an image of extreme aspect ratio (a panorama strip, a
  # line scan) is served, its short side rounding to 1 instead of 0.
  new_h = tf.maximum(tf.minimum(tf.round(h * scale), padded_size[0]), 1.0)
  new_w = tf.maximum(tf.minimum(tf.round(w * scale), padded_size[1]), 1.0)
  return tf.stack([new_h, new_w]), tf.stack([scale, scale])


def normalize_and_pad(image, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                      channel_order: str, padded_size: Sequence[int]):
  """[h, w, 3] float RGB 0-255 -> [padded_h, padded_w, 3] normalized, zero-padded bottom/right."""
  if channel_order == "BGR":
    image = image[..., ::-1]
  image = (image - tf.constant(pixel_mean)) / tf.constant(pixel_std)
  return tf.image.pad_to_bounding_box(image, 0, 0, *padded_size)


def fit_canvas(size, divisibility: int):
  """The smallest canvas holding `size` (int32 [..., 2] h, w) whose sides are multiples of
  `divisibility`."""
  d = tf.constant(divisibility, size.dtype)
  return (size + d - 1) // d * d
