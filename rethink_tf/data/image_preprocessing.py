"""Image decoding, resizing and normalization shared by the input pipeline (training and
evaluation) and the exported SavedModel: one function per step, so served images are prepared
exactly as evaluated ones."""

from typing import Sequence

import tensorflow as tf


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


def resize_for_model(image,
                     short_side: int,
                     max_long_side: int,
                     padded_size: Sequence[int],
                     short=None,
                     antialias: bool = False):
  """Resizes to short side `short_side` (or `short`, a jittered one), long side <= max_long_side,
  never beyond `padded_size`. The input pipeline and the exported SavedModel both call this, so
  served images are resized exactly as evaluated ones.

  Args:
    image: [H, W, 3] uint8 or float (H, W > 0).
  Returns:
    (image [h, w, 3] float32 bilinear-resized, scale float32 scalar, size [2] float32 (h, w)).
  """
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  short = tf.constant(float(short_side)) if short is None else short
  scale = tf.minimum(short / tf.minimum(h, w), max_long_side / tf.maximum(h, w))
  scale = tf.minimum(scale, tf.minimum(padded_size[0] / h, padded_size[1] / w))
  new_h = tf.minimum(tf.round(h * scale), padded_size[0])
  new_w = tf.minimum(tf.round(w * scale), padded_size[1])
  # uint8 straight into the resize (same values as casting first): a float copy at the input's
  # resolution would cost 12 bytes per pixel, 145 MB for a 12 MP photo.
  image = tf.image.resize(image, tf.cast([new_h, new_w], tf.int32), antialias=antialias)
  return image, scale, tf.stack([new_h, new_w])


def normalize_and_pad(image, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                      channel_order: str, padded_size: Sequence[int]):
  """[h, w, 3] float RGB 0-255 -> [padded_h, padded_w, 3] normalized, zero-padded bottom/right."""
  if channel_order == "BGR":
    image = image[..., ::-1]
  image = (image - tf.constant(pixel_mean)) / tf.constant(pixel_std)
  return tf.image.pad_to_bounding_box(image, 0, 0, *padded_size)
