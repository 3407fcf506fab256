"""The serving module: input validation, preprocessing, the detector and post-processing in one
graph, behind three signatures that differ only in how images arrive.

Signatures (every output named; B = batch, D = max_detections, M = mask resolution):
  serving_default(images: uint8 [B, H, W, 3])        decoded RGB images, any H and W
  image_bytes(image_bytes: string [B])               encoded JPEG / PNG / GIF / BMP / WebP
  tf_example(examples: string [B])                   serialized tf.train.Example holding
                                                     `image/encoded` (our TFRecords' feature)
Outputs:
  num_detections               int32   [B]
  detection_boxes              float32 [B, D, 4]  ymin, xmin, ymax, xmax in input-image pixels
  detection_scores             float32 [B, D]
  detection_classes            int64   [B, D]     dataset category ids (0 = padding)
  detection_class_names        string  [B, D]     ("" = padding)
  image_size                   int32   [B, 2]     (height, width) of each input image
  detection_masks              uint8 {0, 1} or float32 [B, D, Hmax, Wmax]: full input-image
                               resolution (Hmax, Wmax = largest image of the batch; pixels
                               outside an image's own size are 0)
  detection_masks_box_relative float32 [B, D, M, M] probabilities relative to each box
Entries at and beyond num_detections are padding (score 0, class 0, empty masks). Models
without a mask head (Faster R-CNN) have no mask outputs.

Bad requests fail with an InvalidArgumentError whose message names the input, the batch index
and the problem; nothing is cached between requests, so the next valid request is unaffected.
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf

from rethink_tf.data.input_pipeline import decode_image, normalize_and_pad, resize_for_model
from rethink_tf.modeling import postprocess

SIGNATURES = ("serving_default", "image_bytes", "tf_example")
IMAGE_FEATURE = "image/encoded"

# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}


def _fail_unless(cond, message):
  """An assert whose error is exactly `message` (a string tensor that may hold indices)."""
  return tf.debugging.Assert(cond, [message])


def _runtime_rank(x):
  """The rank of the tensor actually fed. tf.rank would be constant-folded from the signature's
  static shape; a signature call with a tensor of another rank still reaches the graph (TF
  checks only dtypes there), so count the shape's entries through an op that cannot be folded.
  """
  return tf.shape(tf.where(tf.shape(x) >= 0), out_type=tf.int32)[0]


def _check_rank(x, rank: int, name: str, layout: str):
  return _fail_unless(
      tf.equal(_runtime_rank(x), rank),
      tf.strings.format(f"{name} must be {layout}, got a tensor of shape {{}}", [tf.shape(x)]))


def _contains(data, pattern: bytes):
  """True if the byte string `data` (uint8 [L]) contains `pattern` anywhere."""
  n = len(pattern)
  length = tf.shape(data)[0]
  if_match = tf.ones([tf.maximum(length - n + 1, 0)], tf.bool)
  for k, byte in enumerate(pattern):
    if_match = tf.logical_and(if_match, tf.equal(data[k:length - n + 1 + k], byte))
  return tf.reduce_any(if_match)


def decode_checked(encoded,
                   index,
                   name: str,
                   empty: str = "empty string (0 bytes)",
                   jpeg_dct_method: str = ""):
  """Decodes one encoded image to uint8 [H, W, 3] after checks that name what is wrong.

  TF's own decode errors ("Input is empty", "Invalid JPEG data or crop window") do not say
  which image or why; these checks do, for the common cases: empty input, bytes of no image
  format, and JPEG/PNG files cut short (no end-of-image marker / IEND chunk).
  """

  def message(text, *args):
    return tf.strings.format(f"{name}[{{}}]: {text}", [index, *args])

  length = tf.strings.length(encoded)
  is_empty = _fail_unless(length > 0, message(empty))
  with tf.control_dependencies([is_empty]):
    head = tf.strings.substr(encoded, 0, 12)
  fmt = {k: tf.strings.substr(head, 0, len(v)) == v for k, v in _MAGIC.items()}
  fmt["WEBP"] = tf.logical_and(
      tf.strings.substr(head, 0, 4) == b"RIFF",
      tf.strings.substr(head, 8, 4) == b"WEBP")
  known = tf.reduce_any(tf.stack(list(fmt.values())))
  is_image = _fail_unless(
      known, message("not an image ({} bytes that are not JPEG, PNG, GIF, BMP or WebP)", length))
  with tf.control_dependencies([is_image]):
    data = tf.io.decode_raw(encoded, tf.uint8)
  complete = tf.logical_and(
      tf.logical_or(tf.logical_not(fmt["JPEG"]), _contains(data, b"\xff\xd9")),
      tf.logical_or(tf.logical_not(fmt["PNG"]), _contains(data, b"IEND")))
  is_complete = _fail_unless(
      complete,
      message("truncated image: a {}-byte JPEG/PNG without its end marker (file cut short?)",
              length))
  with tf.control_dependencies([is_complete]):
    image = decode_image(encoded, jpeg_dct_method, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


class DetectionServer(tf.Module):
  """Wraps a built, restored detector for export.

  Args:
    model: `MaskRCNN` with variables created and restored (its `detect` is traced; the Keras
      object itself is not serialized, only its variables).
    preprocessing: dict with short_side, max_long_side, padded_size, pixel_mean, pixel_std,
      channel_order and optionally jpeg_dct_method and resize_antialias (the
      evaluation-time `InputConfig` values).
    category_ids: [K-1] dataset ids of contiguous classes 1..K-1; category_names: same length.
    binary_masks: detection_masks as uint8 {0, 1} (True) or float32 probabilities (False).
    batch_size: fixed batch of every signature, or None for any batch.
    assets: {attribute name: file path} shipped in the SavedModel's assets/.
  """

  def __init__(self,
               model,
               preprocessing: Dict,
               category_ids: Sequence[int],
               category_names: Sequence[str],
               binary_masks: bool = True,
               batch_size: Optional[int] = None,
               assets: Optional[Dict[str, str]] = None):
    super().__init__(name="detection_server")
    if not model.variables:
      raise ValueError("the model has no variables yet: build it (run detect once) and restore "
                       "its checkpoint before wrapping it for export")
    # A bound method, not the Keras model: the model itself must not be tracked, or the saver
    # would serialize every Keras layer (slow, and nothing a server needs). Traced once with a
    # fixed signature, the detector is one function that the three signatures call, so the
    # SavedModel stores it once rather than inlined in each signature (saved_model.pb 3.97 ->
    # 3.63 MB at R50-FPN; the Python loader's time grows with the nodes it re-imports). It is
    # set past tf.Module's attribute tracking, or the saver adds a copy of its own.
    ph, pw = preprocessing["padded_size"]
    object.__setattr__(
        self, "_detect_fn",
        tf.function(model.detect,
                    input_signature=[
                        tf.TensorSpec([batch_size, ph, pw, 3], tf.float32),
                        tf.TensorSpec([batch_size, 2], tf.float32)
                    ]))
    # Tracked so the traced graph's captured variables are saved (the Keras model is not).
    self.model_variables = list(model.variables)
    self.category_ids = tf.Variable(tf.constant([int(c) for c in category_ids], tf.int64),
                                    trainable=False,
                                    name="category_ids")
    self.category_names = tf.Variable(tf.constant(list(category_names)),
                                      trainable=False,
                                      name="category_names")
    for attr, path in (assets or {}).items():
      setattr(self, attr, tf.saved_model.Asset(path))
    self._pre = dict(preprocessing)
    self._binary_masks = binary_masks
    self._batch = batch_size
    # Index 0 is padding: class k (1..K-1) -> category_ids[k - 1].
    self._ids_table = tf.constant([0] + [int(c) for c in category_ids], tf.int64)
    self._names_table = tf.constant([""] + list(category_names))

  # -- the shared graph -------------------------------------------------------------------------

  def _preprocess(self, image):
    p = self._pre
    resized, scale, size = resize_for_model(image,
                                            p["short_side"],
                                            p["max_long_side"],
                                            p["padded_size"],
                                            antialias=p.get("resize_antialias", False))
    padded = normalize_and_pad(resized, p["pixel_mean"], p["pixel_std"], p["channel_order"],
                               p["padded_size"])
    return padded, size, scale, tf.shape(image)[:2]

  def _detect(self, decode_one, inputs):
    """Runs decode_one(index, input) -> uint8 [H, W, 3] per element, then the detector."""
    batch = tf.shape(inputs)[0]
    not_empty = _fail_unless(batch > 0, "empty batch: send at least one image")
    with tf.control_dependencies([not_empty]):
      index = tf.range(batch)
    ph, pw = self._pre["padded_size"]
    padded, sizes, scales, hws = tf.map_fn(lambda a: self._preprocess(decode_one(a[0], a[1])),
                                           (index, inputs),
                                           fn_output_signature=(tf.TensorSpec([ph, pw, 3],
                                                                              tf.float32),
                                                                tf.TensorSpec([2], tf.float32),
                                                                tf.TensorSpec([], tf.float32),
                                                                tf.TensorSpec([2], tf.int32)))
    if self._batch:
      padded = tf.ensure_shape(padded, [self._batch, ph, pw, 3])
    det = self._detect_fn(padded, sizes)
    num = det["num_detections"]
    d = det["scores"].shape[1]
    valid = tf.range(d)[None, :] < num[:, None]
    classes = tf.where(valid, det["classes"], 0)
    has_masks = "masks" in det
    canvas = tf.reduce_max(hws, axis=0)

    def to_image(args):
      boxes, masks, n, scale, hw = args
      boxes, pasted = postprocess.to_input_image(boxes,
                                                 masks if has_masks else None,
                                                 n,
                                                 scale,
                                                 hw,
                                                 canvas,
                                                 binary_masks=self._binary_masks)
      return (boxes, pasted) if has_masks else boxes

    mask_dtype = tf.uint8 if self._binary_masks else tf.float32
    box_spec = tf.TensorSpec([d, 4], tf.float32)
    relative = det["masks"] if has_masks else tf.zeros([batch, d, 1, 1])
    mapped = tf.map_fn(
        to_image, (det["boxes"], relative, num, scales, hws),
        fn_output_signature=(box_spec,
                             tf.TensorSpec([d, None, None], mask_dtype)) if has_masks else box_spec)
    boxes = mapped[0] if has_masks else mapped
    out = {
        "num_detections": tf.cast(num, tf.int32),
        "detection_boxes": boxes * tf.cast(valid, tf.float32)[..., None],
        "detection_scores": det["scores"] * tf.cast(valid, tf.float32),
        "detection_classes": tf.gather(self._ids_table, classes),
        "detection_class_names": tf.gather(self._names_table, classes), "image_size": hws
    }
    if has_masks:
      out["detection_masks"] = mapped[1]
      out["detection_masks_box_relative"] = (tf.cast(det["masks"], tf.float32) *
                                             tf.cast(valid, tf.float32)[..., None, None])
    return out

  # -- the three ways images arrive --------------------------------------------------------------

  def _serve_images(self, images):
    rank_ok = _check_rank(images, 4, "images", "uint8 [batch, height, width, 3]")
    with tf.control_dependencies([rank_ok]):
      shape = tf.shape(images)
    rgb = _fail_unless(
        tf.equal(shape[3], 3),
        tf.strings.format("images must have 3 channels (RGB), got shape {}", [shape]))
    ok = _fail_unless(
        tf.logical_and(shape[1] > 0, shape[2] > 0),
        tf.strings.format("images: zero-size image (shape {}): height and width must be at least 1",
                          [shape]))
    with tf.control_dependencies([rgb, ok]):
      images = tf.identity(images)
    return self._detect(lambda i, image: image, images)

  def _serve_bytes(self, image_bytes):
    rank_ok = _check_rank(image_bytes, 1, "image_bytes", "a string vector [batch]")
    with tf.control_dependencies([rank_ok]):
      image_bytes = tf.identity(image_bytes)
    dct = self._pre.get("jpeg_dct_method", "")
    return self._detect(lambda i, b: decode_checked(b, i, "image_bytes", jpeg_dct_method=dct),
                        image_bytes)

  def _serve_examples(self, examples):
    rank_ok = _check_rank(examples, 1, "examples", "a string vector [batch]")
    with tf.control_dependencies([rank_ok]):
      examples = tf.identity(examples)
    features = tf.io.parse_example(
        examples, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value="")})
    encoded = features[IMAGE_FEATURE]
    return self._detect(
        lambda i, b: decode_checked(b, i, "examples",
                                    f"no {IMAGE_FEATURE} feature, or an empty one",
                                    self._pre.get("jpeg_dct_method", "")), encoded)

  def signatures(self, names: Sequence[str] = SIGNATURES):
    """{name: concrete function} for `tf.saved_model.save(..., signatures=...)`; each name
    traces the whole detector once."""
    b = self._batch
    fns = {
        "serving_default": (self._serve_images,
                            tf.TensorSpec([b, None, None, 3], tf.uint8, name="images")),
        "image_bytes": (self._serve_bytes, tf.TensorSpec([b], tf.string, name="image_bytes")),
        "tf_example": (self._serve_examples, tf.TensorSpec([b], tf.string, name="examples")),
    }
    return {
        name: tf.function(fns[name][0], input_signature=[fns[name][1]]).get_concrete_function()
        for name in names
    }
