"""Image sizes read from encoded headers (every format TF decodes), and the request limits."""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from rethink_tf.serving.request_checks import (
    RequestLimits,
    check_batch,
    decode_checked,
    header_size,
    image_formats,
)

from conftest import declared_png


def _encode(fmt, width, height, **kwargs):
  rng = np.random.default_rng(width * 7 + height)
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
  return buf.getvalue()


@tf.function(autograph=False)
def _header(encoded):
  return header_size(tf.io.decode_raw(encoded, tf.uint8), image_formats(encoded))


CASES = [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
         ("WEBP", {"lossless": False}), ("WEBP", {"lossless": True})]


@pytest.mark.parametrize("fmt,kwargs", CASES, ids=lambda c: str(c))
def test_header_size_equals_the_decoded_size(fmt, kwargs):
  for width, height in ((37, 23), (640, 480), (5, 300)):
    encoded = _encode(fmt, width, height, **kwargs)
    h, w, found = (int(v) for v in _header(tf.constant(encoded)))
    decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    assert found and (h, w) == (height, width) == tuple(decoded.shape[:2]), (fmt, width, height)


def test_jpeg_size_found_after_large_exif_and_fill_bytes():
  jpeg = _encode("JPEG", 41, 17)
  app1 = b"\xff\xe1" + struct.pack(">H", 60002) + b"Exif\x00\x00" + bytes(59994)
  # An APP1 segment of 60 KB and fill bytes before the next marker, both legal.
  edited = jpeg[:2] + app1 + b"\xff\xff\xff" + jpeg[2:]
  assert tuple(int(v) for v in _header(tf.constant(edited))) == (17, 41, 1)
  assert tf.io.decode_jpeg(edited).shape[:2] == (17, 41)


def test_header_without_a_size_is_not_found():
  for data in (b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n\x00\x00", b"GIF89a\x01",
               b"RIFF\x00\x00\x00\x00WEBPVP8X"):
    assert not bool(_header(tf.constant(data))[2]), data


def test_decode_checked_refuses_over_budget_before_decoding():
  small = declared_png(64, 48)
  limits = RequestLimits(max_image_pixels=64 * 48)
  fn = tf.function(lambda b: decode_checked(b, 3, "image_bytes", limits), autograph=False)
  assert fn(tf.constant(small)).shape == (48, 64, 3)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"image_bytes\[3\]: 65 x 48 pixels \(3120\), over the limit of 3072 "
                     r"pixels per image \(export flag --max_image_pixels\)"):
    fn(tf.constant(declared_png(65, 48)))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[3\]: no image size"):
    fn(tf.constant(small[:20]))


def test_batch_and_byte_limits_name_the_request():
  limits = RequestLimits(max_batch_size=3, max_request_bytes=100)

  @tf.function(autograph=False)
  def check(sizes):
    with tf.control_dependencies(check_batch("image_bytes", tf.shape(sizes)[0], sizes, limits)):
      return tf.constant(True)

  assert check(tf.constant([40, 60], tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"image_bytes: a batch of 4 images, over the limit of 3 per request "
                     r"\(export flag --max_batch_size\)"):
    check(tf.constant([1, 1, 1, 1], tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"image_bytes\[1\]: the request reaches 101 bytes at this image, over "
                     r"the limit of 100 bytes"):
    check(tf.constant([40, 61, 19], tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
    check(tf.zeros([0], tf.int64))
  with pytest.raises(ValueError, match="max_batch_size must be a positive integer"):
    RequestLimits(max_batch_size=0)
