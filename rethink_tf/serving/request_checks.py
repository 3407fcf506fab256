"""Checks of serving requests, in the graph, before anything large is allocated.

Every check fails with an InvalidArgumentError whose message names the input, the batch index,
what is wrong and, for limits, the size and the limit. Image sizes are read from the encoded
file's header (JPEG SOF, PNG IHDR, GIF screen descriptor, BMP info header, WebP VP8/VP8L/VP8X),
so a file that would decode to more pixels than the budget is refused without being decoded:
a 1 MB PNG can declare 20000 x 20000 pixels (1.2 GB decoded).
"""

from dataclasses import dataclass

import tensorflow as tf

from rethink_tf.data.decode_guard import decode_or_flag

# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}
# JPEG markers SOF0..SOF15 carry the frame size, except DHT (C4), JPG (C8) and DAC (CC).
_NOT_SOF = (0xC4, 0xC8, 0xCC)
# A JPEG's frame header comes within its first markers; a scan that needs more steps than this
# is reading something else.
_MAX_JPEG_STEPS = 4096


@dataclass(frozen=True)
class RequestLimits:
  """What one request may ask of the server (export flags of the same names).

  max_image_pixels: height x width of any one image (50 MP: beyond every phone camera's
    default mode); max_batch_size: images per request; max_request_bytes: the request's
    encoded bytes (image_bytes, tf_example) or its uint8 pixels (serving_default).
  """
  max_image_pixels: int = 50_000_000
  max_batch_size: int = 64
  max_request_bytes: int = 256 * 2**20

  def __post_init__(self):
    for name in ("max_image_pixels", "max_batch_size", "max_request_bytes"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")


def fail_unless(cond, message):
  """An assert whose error is exactly `message` (a string tensor that may hold indices)."""
  return tf.debugging.Assert(cond, [message])


def _runtime_rank(x):
  """The rank of the tensor actually fed. tf.rank would be constant-folded from the signature's
  static shape; a signature call with a tensor of another rank still reaches the graph (TF
  checks only dtypes there), so count the shape's entries through an op that cannot be folded.
  """
  return tf.shape(tf.where(tf.shape(x) >= 0), out_type=tf.int32)[0]


def check_rank(x, rank: int, name: str, layout: str):
  return fail_unless(
      tf.equal(_runtime_rank(x), rank),
      tf.strings.format(f"{name} must be {layout}, got a tensor of shape {{}}", [tf.shape(x)]))


def check_batch(name: str, batch, request_bytes, limits: RequestLimits):
  """Asserts of a whole request: not empty, at most max_batch_size images, and the running
  total of its bytes (int64 [B], one entry per image) within max_request_bytes (the first image
  that crosses it is named)."""
  not_empty = fail_unless(batch > 0, "empty batch: send at least one image")
  small = fail_unless(
      batch <= limits.max_batch_size,
      tf.strings.format(
          f"{name}: a batch of {{}} images, over the limit of {limits.max_batch_size} per "
          "request (export flag --max_batch_size)", [batch]))
  # A sentinel entry keeps argmax and gather defined for an empty batch.
  total = tf.concat([tf.cumsum(tf.cast(request_bytes, tf.int64)), [0]], 0)
  over = tf.concat([total[:-1] > limits.max_request_bytes, [True]], 0)
  first = tf.argmax(tf.cast(over, tf.int32), output_type=tf.int32)
  over = over[:-1]
  within = fail_unless(
      tf.logical_not(tf.reduce_any(over)),
      tf.strings.format(
          f"{name}[{{}}]: the request reaches {{}} bytes at this image, over the limit of "
          f"{limits.max_request_bytes} bytes per request (export flag --max_request_bytes)",
          [first, tf.gather(total, first)]))
  return [not_empty, small, within]


def check_pixels(name: str, index, height, width, limits: RequestLimits):
  """Asserts height x width <= max_image_pixels (int64 scalars; index names the image)."""
  pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
  return fail_unless(
      pixels <= limits.max_image_pixels,
      tf.strings.format(
          f"{name}[{{}}]: {{}} x {{}} pixels ({{}}), over the limit of {limits.max_image_pixels} "
          "pixels per image (export flag --max_image_pixels)", [index, width, height, pixels]))


def _contains(data, pattern: bytes):
  """True if the byte string `data` (uint8 [L]) contains `pattern` anywhere."""
  n = len(pattern)
  length = tf.shape(data)[0]
  if_match = tf.ones([tf.maximum(length - n + 1, 0)], tf.bool)
  for k, byte in enumerate(pattern):
    if_match = tf.logical_and(if_match, tf.equal(data[k:length - n + 1 + k], byte))
  return tf.reduce_any(if_match)


def _uint(data, start, size: int, big_endian: bool):
  """The unsigned integer in data[start:start + size] (uint8 [L]) as int64; bytes past the end
  read as 0 (the caller checks the length)."""
  length = tf.shape(data)[0]
  index = tf.cast(start, tf.int32) + tf.range(size)
  b = tf.where(index < length, tf.cast(tf.gather(data, tf.minimum(index, length - 1)), tf.int64), 0)
  weights = [256**k for k in (range(size - 1, -1, -1) if big_endian else range(size))]
  return tf.reduce_sum(b * tf.constant(weights, tf.int64))


def _jpeg_size(data):
  """(height, width, found) from the first SOF marker, walking the marker segments."""
  length = tf.shape(data)[0]
  byte = lambda p: tf.cast(tf.gather(data, tf.minimum(p, length - 1)), tf.int32)

  def cond(p, h, w, done):
    return tf.logical_and(tf.logical_not(done), p + 9 <= length)

  def body(p, h, w, done):
    b0, m = byte(p), byte(p + 1)
    marker = tf.logical_and(tf.equal(b0, 0xFF), tf.logical_and(m != 0xFF, m != 0))
    sof = tf.logical_and(marker, tf.logical_and(m >= 0xC0, m <= 0xCF))
    for code in _NOT_SOF:
      sof = tf.logical_and(sof, m != code)
    # Markers without a length: RSTn, SOI, TEM. Scan data (SOS) or the end (EOI) before any SOF:
    # no frame size to find.
    bare = tf.logical_and(marker,
                          tf.logical_or(tf.logical_and(m >= 0xD0, m <= 0xD8), tf.equal(m, 0x01)))
    stop = tf.logical_and(marker, tf.logical_or(tf.equal(m, 0xDA), tf.equal(m, 0xD9)))
    seg = tf.cast(_uint(data, p + 2, 2, True), tf.int32)
    # Fill bytes (0xFF 0xFF) and stray bytes between segments advance one byte, as libjpeg does.
    nxt = tf.where(sof | stop, p, tf.where(bare, p + 2, tf.where(marker, p + 2 + seg, p + 1)))
    h = tf.where(sof, _uint(data, p + 5, 2, True), h)
    w = tf.where(sof, _uint(data, p + 7, 2, True), w)
    return nxt, h, w, tf.logical_or(done, tf.logical_or(sof, stop))

  zero = tf.constant(0, tf.int64)
  _, h, w, _ = tf.while_loop(cond,
                             body, (tf.constant(2), zero, zero, tf.constant(False)),
                             maximum_iterations=_MAX_JPEG_STEPS)
  return h, w, tf.logical_and(h > 0, w > 0)


def _webp_size(data):
  """(height, width, found) of a WebP: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
  chunk = _uint(data, 12, 4, True)
  vp8 = tf.equal(chunk, int.from_bytes(b"VP8 ", "big"))
  vp8l = tf.equal(chunk, int.from_bytes(b"VP8L", "big"))
  vp8x = tf.equal(chunk, int.from_bytes(b"VP8X", "big"))
  bits = _uint(data, 21, 4, False)  # VP8L: 14 bits width - 1, 14 bits height - 1
  w = tf.where(
      vp8, tf.bitwise.bitwise_and(_uint(data, 26, 2, False), 0x3FFF),
      tf.where(vp8l,
               tf.bitwise.bitwise_and(bits, 0x3FFF) + 1,
               _uint(data, 24, 3, False) + 1))
  h = tf.where(
      vp8, tf.bitwise.bitwise_and(_uint(data, 28, 2, False), 0x3FFF),
      tf.where(vp8l,
               tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1,
               _uint(data, 27, 3, False) + 1))
  found = tf.logical_and(tf.reduce_any(tf.stack([vp8, vp8l, vp8x])), tf.shape(data)[0] >= 30)
  return h, w, found


def header_size(data, formats):
  """(height, width, found) of an encoded image from its header, without decoding it.

  Args:
    data: uint8 [L], the file's bytes; formats: {name: bool scalar} from the magic bytes.
  """
  length = tf.shape(data)[0]
  png = (_uint(data, 20, 4, True), _uint(data, 16, 4, True), length >= 24)
  gif = (_uint(data, 8, 2, False), _uint(data, 6, 2, False), length >= 10)
  # BMP: BITMAPCOREHEADER (12 bytes) has 16-bit sizes, every later header 32-bit signed ones (a
  # negative height is a top-down bitmap).
  core = tf.equal(_uint(data, 14, 4, False), 12)
  bmp_h = tf.where(core, _uint(data, 20, 2, False), _uint(data, 22, 4, False))
  bmp_h = tf.where(bmp_h >= 2**31, 2**32 - bmp_h, bmp_h)
  bmp = (bmp_h, tf.where(core, _uint(data, 18, 2, False), _uint(data, 18, 4, False)), length >= 26)
  h, w, found = _webp_size(data)
  for name, (fh, fw, ok) in (("BMP", bmp), ("GIF", gif), ("PNG", png)):
    h = tf.where(formats[name], fh, h)
    w = tf.where(formats[name], fw, w)
    found = tf.where(formats[name], ok, found)
  # The JPEG walk runs only for JPEGs.
  jh, jw, jfound = tf.cond(
      formats["JPEG"], lambda: _jpeg_size(data), lambda:
      (tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(False)))
  h = tf.where(formats["JPEG"], jh, h)
  w = tf.where(formats["JPEG"], jw, w)
  found = tf.where(formats["JPEG"], jfound, found)
  return h, w, found


def image_formats(encoded):
  """{format name: bool scalar} from an encoded image's leading bytes."""
  # Padded to 12 bytes: a substr past the end of a shorter file fails with a message that
  # quotes the file's bytes.
  head = tf.strings.join([tf.strings.substr(encoded, 0, 12), b"\0" * 12])
  fmt = {k: tf.strings.substr(head, 0, len(v)) == v for k, v in _MAGIC.items()}
  fmt["WEBP"] = tf.logical_and(
      tf.strings.substr(head, 0, 4) == b"RIFF",
      tf.strings.substr(head, 8, 4) == b"WEBP")
  return fmt


def decode_checked(encoded,
                   index,
                   name: str,
                   limits: RequestLimits,
                   empty: str = "empty string (0 bytes)",
                   jpeg_dct_method: str = ""):
  """Decodes one encoded image to uint8 [H, W, 3] after checks that name what is wrong.

  TF's own decode errors ("Input is empty", "Invalid PNG data") do not say which image or why;
  these checks do: empty input, bytes of no image format, a header without a size, more pixels
  than the budget (read from the header, before decoding), JPEG/PNG files cut short (no
  end-of-image marker / IEND chunk), and then any decode failure after a valid header (a corrupt
  payload: the decode runs `decode_guard.guarded`, so TF's error never reaches the client).
  """

  def message(text, *args):
    return tf.strings.format(f"{name}[{{}}]: {text}", [index, *args])

  length = tf.strings.length(encoded)
  is_empty = fail_unless(length > 0, message(empty))
  with tf.control_dependencies([is_empty]):
    fmt = image_formats(encoded)
  known = tf.reduce_any(tf.stack(list(fmt.values())))
  is_image = fail_unless(
      known, message("not an image ({} bytes that are not JPEG, PNG, GIF, BMP or WebP)", length))
  with tf.control_dependencies([is_image]):
    data = tf.io.decode_raw(encoded, tf.uint8)
  height, width, found = header_size(data, fmt)
  has_size = fail_unless(
      tf.logical_and(found, tf.logical_and(height > 0, width > 0)),
      message("no image size in the header of this {}-byte file (cut short or not an image?)",
              length))
  with tf.control_dependencies([has_size]):
    in_budget = check_pixels(name, index, height, width, limits)
  complete = tf.logical_and(
      tf.logical_or(tf.logical_not(fmt["JPEG"]), _contains(data, b"\xff\xd9")),
      tf.logical_or(tf.logical_not(fmt["PNG"]), _contains(data, b"IEND")))
  is_complete = fail_unless(
      complete,
      message("truncated image: a {}-byte JPEG/PNG without its end marker (file cut short?)",
              length))
  with tf.control_dependencies([is_complete, in_budget]):
    image, decoded = decode_or_flag(encoded, jpeg_dct_method)
  names = tf.gather(tf.constant(list(fmt)),
                    tf.argmax(tf.cast(tf.stack(list(fmt.values())), tf.int32)))
  # Joined, not formatted: tf.strings.format would quote the format's name.
  is_decoded = fail_unless(
      decoded,
      tf.strings.join([
          message("corrupt image: the "), names,
          tf.strings.format(" data after a valid {} x {} header does not decode ({} bytes)",
                            [width, height, length])
      ]))
  with tf.control_dependencies([is_decoded]):
    return tf.identity(image)
