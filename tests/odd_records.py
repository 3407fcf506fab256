"""Odd images as users' data holds them, and records that carry them: shared by the input
pipeline, training, evaluation and fuzz tests.

Each kind re-encodes a record's image (its boxes and masks are normalized or at the original
resolution, so they stay consistent with any re-encoded size): USABLE kinds must be decoded as
Pillow decodes them and trained on; REFUSED kinds must stop the run (or be skipped) with the
record named and the reason given.
"""

import io
from typing import Callable, Dict

import numpy as np
import tensorflow as tf
from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _png16(rgb: Image.Image) -> bytes:
  """A 16-bit grayscale PNG of the image's luminance (value x 257: full 16-bit range)."""
  gray = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
  return _save(Image.fromarray(gray), "PNG")


def _animated_gif(rgb: Image.Image) -> bytes:
  second = Image.fromarray(255 - np.asarray(rgb))
  return _save(rgb, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def corrupt_png(rgb: Image.Image) -> bytes:
  """A PNG whose header is intact and whose compressed data (IDAT) has 64 bytes flipped."""
  data = bytearray(_save(rgb, "PNG"))
  start = data.index(b"IDAT") + 8
  for i in range(start, min(start + 64, len(data) - 16)):
    data[i] ^= 0x5A
  return bytes(data)


# kind -> image -> encoded bytes (the record's height and width features follow the image)
USABLE: Dict[str, Callable[[Image.Image], bytes]] = {
    "extreme_aspect_2x4000": lambda im: _save(im.resize((4000, 2)), "PNG"),
    "one_pixel_1x1": lambda im: _save(im.resize((1, 1)), "PNG"),
    "gray_png": lambda im: _save(im.convert("L"), "PNG"),
    "rgba_png": lambda im: _save(im.convert("RGBA"), "PNG"),
    "palette_png": lambda im: _save(im.convert("P"), "PNG"),
    "png_16_bit": _png16,
    "cmyk_jpeg": lambda im: _save(im.convert("CMYK"), "JPEG", quality=95),
    "progressive_jpeg": lambda im: _save(im, "JPEG", quality=95, progressive=True),
    "animated_gif": _animated_gif,
    "bmp": lambda im: _save(im, "BMP"),
    "webp_lossless": lambda im: _save(im, "WEBP", lossless=True),
}
# kind -> record bytes -> damaged record bytes
REFUSED = ("corrupt_payload", "size_mismatch")


def expected_pixels(encoded: bytes) -> np.ndarray:
  """uint8 [H, W, 3]: what the pipeline must decode (Pillow's RGB; a 16-bit image's top byte;
  an animation's first frame)."""
  with Image.open(io.BytesIO(encoded)) as im:
    if im.mode in ("I;16", "I;16B", "I"):
      gray = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
      return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def _feature(example, key):
  return example.features.feature[key]


def record_image(record: bytes) -> Image.Image:
  example = tf.train.Example.FromString(record)
  return Image.open(io.BytesIO(_feature(example,
                                        "image/encoded").bytes_list.value[0])).convert("RGB")


def odd_record(record: bytes, kind: str) -> bytes:
  """The record with its image re-encoded as `kind` (USABLE or REFUSED)."""
  example = tf.train.Example.FromString(record)
  image = record_image(record)
  if kind in USABLE:
    encoded = USABLE[kind](image)
    with Image.open(io.BytesIO(encoded)) as im:
      width, height = im.size
  elif kind == "corrupt_payload":
    encoded, (width, height) = corrupt_png(image), image.size
  elif kind == "size_mismatch":  # the features keep the original size
    width, height = image.size
    encoded = _save(image.resize((width + 8, height)), "PNG")
  else:
    raise ValueError(kind)
  _feature(example, "image/encoded").bytes_list.value[:] = [encoded]
  _feature(example, "image/height").int64_list.value[:] = [height]
  _feature(example, "image/width").int64_list.value[:] = [width]
  if "image/format" in example.features.feature:
    del example.features.feature["image/format"]
  return example.SerializeToString()


def write_shard(path: str, records) -> list:
  """Writes records; returns each one's byte offset."""
  offsets, offset = [], 0
  with tf.io.TFRecordWriter(path) as w:
    for r in records:
      w.write(r)
      offsets.append(offset)
      offset += 16 + len(r)
  return offsets
