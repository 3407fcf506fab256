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
  detection_masks_rle          string  [B, D]     each mask over its whole input image as COCO
                               compressed RLE `counts` (pycocotools' `mask.encode` string,
                               printable ASCII; decode with size = image_size; "" = padding)
  detection_masks_box_relative float32 [B, D, M, M] probabilities relative to each box
  detection_masks              only when exported with full_resolution_masks: uint8 {0, 1} or
                               float32 [B, D, Hmax, Wmax] (Hmax, Wmax = largest image of the
                               batch; pixels outside an image's own size are 0)
Entries at and beyond num_detections are padding (score 0, class 0, RLE "", empty masks). Models
without a mask head (Faster R-CNN) have no mask outputs.

Bad requests fail with an InvalidArgumentError whose message names the input, the batch index
and the problem, and requests over the export's `RequestLimits` (pixels per image, read from the
encoded header before decoding; images per request; bytes per request) name the size and the
limit; nothing is cached between requests, so the next valid request is unaffected.
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf

from rethink_tf.data.decode_guard import guarded
from rethink_tf.data.image_preprocessing import fit_canvas, normalize_and_pad, resize_for_model
from rethink_tf.modeling import postprocess
from rethink_tf.serving.request_checks import (
    RequestLimits,
    check_batch,
    check_pixels,
    check_rank,
    decode_checked,
    fail_unless,
)

SIGNATURES = ("serving_default", "image_bytes", "tf_example")
IMAGE_FEATURE = "image/encoded"
FULL_RESOLUTION_MASKS = (None, "binary", "probability")


class DetectionServer(tf.Module):
  """Wraps a built, restored detector for export.

  Args:
    model: `MaskRCNN` with variables created and restored (its `detect` is traced; the Keras
      object itself is not serialized, only its variables).
    preprocessing: dict with short_side, max_long_side, padded_size, pixel_mean, pixel_std,
      channel_order and optionally jpeg_dct_method, resize_antialias, resize_method and
      size_divisibility (the evaluation-time `InputConfig` values).
    fixed_canvas: pad every image to `padded_size` (one static shape: TPU serving, XLA);
      default: each request is padded only to its largest resized image rounded up to
      `size_divisibility`, as evaluation pads (`InputConfig.eval_canvas = "fit"`) and
      detectron2 does, so an image's detections do not depend on a canvas sized for the
      largest possible image.
    category_ids: [K-1] dataset ids of contiguous classes 1..K-1; category_names: same length.
    full_resolution_masks: None (default), "binary" or "probability": also return
      `detection_masks`, every detection's mask over the whole canvas as uint8 {0, 1} or
      float32: D x Hmax x Wmax bytes per image (x4 for probabilities), whatever was detected.
    batch_size: fixed batch of every signature, or None for any batch.
    limits: `RequestLimits` (default: 50 MP per image, 64 images, 256 MB per request).
    assets: {attribute name: file path} shipped in the SavedModel's assets/.
  """

  def __init__(self,
               model,
               preprocessing: Dict,
               category_ids: Sequence[int],
               category_names: Sequence[str],
               full_resolution_masks: Optional[str] = None,
               batch_size: Optional[int] = None,
               assets: Optional[Dict[str, str]] = None,
               limits: Optional[RequestLimits] = None,
               fixed_canvas: bool = False):
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
    self._fixed_canvas = fixed_canvas
    ph, pw = preprocessing["padded_size"] if fixed_canvas else (None, None)
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
    if full_resolution_masks not in FULL_RESOLUTION_MASKS:
      raise ValueError(f"full_resolution_masks must be one of {FULL_RESOLUTION_MASKS}, got "
                       f"{full_resolution_masks!r}")
    self._full_masks = full_resolution_masks
    self._limits = limits or RequestLimits()
    self._batch = batch_size
    # Index 0 is padding: class k (1..K-1) -> category_ids[k - 1].
    self._ids_table = tf.constant([0] + [int(c) for c in category_ids], tf.int64)
    self._names_table = tf.constant([""] + list(category_names))

  # -- the shared graph -------------------------------------------------------------------------

  def _preprocess(self, image):
    """uint8 [H, W, 3] -> (normalized image [h, w, 3] (padded to `padded_size` with a fixed
    canvas), resized size [2], (y, x) scale [2], input size [2])."""
    p = self._pre
    resized, scale, size = resize_for_model(image,
                                            p["short_side"],
                                            p["max_long_side"],
                                            p["padded_size"],
                                            antialias=p.get("resize_antialias", False),
                                            method=p.get("resize_method", "tensorflow"))
    canvas = p["padded_size"] if self._fixed_canvas else tf.shape(resized)[:2]
    padded = normalize_and_pad(resized, p["pixel_mean"], p["pixel_std"], p["channel_order"],
                               [canvas[0], canvas[1]])
    return padded, size, scale, tf.shape(image)[:2]

  def _detect(self, decode_one, inputs, name, request_bytes):
    """Runs decode_one(index, input) -> uint8 [H, W, 3] per element, then the detector.

    request_bytes: int64 [B], each input's size, checked against the limits first."""
    batch = tf.shape(inputs)[0]
    with tf.control_dependencies(check_batch(name, batch, request_bytes, self._limits)):
      index = tf.range(batch)
    prepare = lambda a: self._preprocess(decode_one(a[0], a[1]))
    rest = (tf.TensorSpec([2], tf.float32), tf.TensorSpec([2],
                                                          tf.float32), tf.TensorSpec([2], tf.int32))
    if self._fixed_canvas:
      ph, pw = self._pre["padded_size"]
      padded, sizes, scales, hws = tf.map_fn(prepare, (index, inputs),
                                             fn_output_signature=(tf.TensorSpec([ph, pw, 3],
                                                                                tf.float32), *rest))
      if self._batch:
        padded = tf.ensure_shape(padded, [self._batch, ph, pw, 3])
    else:
      # Images of several sizes: ragged, then zero-padded (the normalized value detectron2
      # pads with) to the largest, rounded up to the FPN's stride.
      def prepare_ragged(a):
        image, *more = prepare(a)
        return (tf.RaggedTensor.from_tensor(image), *more)

      ragged, sizes, scales, hws = tf.map_fn(
          prepare_ragged, (index, inputs),
          fn_output_signature=(tf.RaggedTensorSpec([None, None, 3], tf.float32,
                                                   ragged_rank=1), *rest))
      padded = ragged.to_tensor()
      shape = tf.shape(padded)
      canvas = fit_canvas(shape[1:3], self._pre.get("size_divisibility", 32))
      padded = tf.pad(padded,
                      [[0, 0], [0, canvas[0] - shape[1]], [0, canvas[1] - shape[2]], [0, 0]])
    det = self._detect_fn(padded, sizes)
    num = det["num_detections"]
    d = det["scores"].shape[1]
    valid = tf.range(d)[None, :] < num[:, None]
    classes = tf.where(valid, det["classes"], 0)
    has_masks = "masks" in det
    boxes, rles = postprocess.batch_to_input_images(det["boxes"], det.get("masks"), num, scales,
                                                    hws)
    out = {
        "num_detections": tf.cast(num, tf.int32),
        "detection_boxes": boxes * tf.cast(valid, tf.float32)[..., None],
        "detection_scores": det["scores"] * tf.cast(valid, tf.float32),
        "detection_classes": tf.gather(self._ids_table, classes),
        "detection_class_names": tf.gather(self._names_table, classes), "image_size": hws
    }
    if has_masks:
      out["detection_masks_rle"] = rles
      out["detection_masks_box_relative"] = (tf.cast(det["masks"], tf.float32) *
                                             tf.cast(valid, tf.float32)[..., None, None])
      if self._full_masks:
        canvas = tf.reduce_max(hws, axis=0)
        binary = self._full_masks == "binary"
        out["detection_masks"] = tf.map_fn(
            lambda a: postprocess.full_resolution_masks(*a, canvas, binary=binary),
            (det["masks"], boxes, num, hws),
            fn_output_signature=tf.TensorSpec([d, None, None], tf.uint8 if binary else tf.float32))
    return out

  # -- the three ways images arrive --------------------------------------------------------------

  def _serve_images(self, images):
    rank_ok = check_rank(images, 4, "images", "uint8 [batch, height, width, 3]")
    with tf.control_dependencies([rank_ok]):
      shape = tf.shape(images)
    rgb = fail_unless(tf.equal(shape[3], 3),
                      tf.strings.format("images must have 3 channels (RGB), got shape {}", [shape]))
    ok = fail_unless(
        tf.logical_and(shape[1] > 0, shape[2] > 0),
        tf.strings.format("images: zero-size image (shape {}): height and width must be at least 1",
                          [shape]))
    with tf.control_dependencies(
        [rgb, ok, check_pixels("images", 0, shape[1], shape[2], self._limits)]):
      images = tf.identity(images)
    pixel_bytes = tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64) * 3
    return self._detect(lambda i, image: image, images, "images", tf.fill([shape[0]], pixel_bytes))

  def _serve_bytes(self, image_bytes):
    rank_ok = check_rank(image_bytes, 1, "image_bytes", "a string vector [batch]")
    with tf.control_dependencies([rank_ok]):
      image_bytes = tf.identity(image_bytes)
    dct = self._pre.get("jpeg_dct_method", "")
    return self._detect(
        lambda i, b: decode_checked(b, i, "image_bytes", self._limits, jpeg_dct_method=dct),
        image_bytes, "image_bytes", tf.cast(tf.strings.length(image_bytes), tf.int64))

  def _serve_examples(self, examples):
    rank_ok = check_rank(examples, 1, "examples", "a string vector [batch]")
    with tf.control_dependencies([rank_ok]):
      examples = tf.identity(examples)
    spec = {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value="")}

    def decode_one(i, serialized):
      # Parsed one by one under the guard: a record that does not parse gets a message naming
      # its index, never ParseExample's, which quotes the record's bytes.
      encoded, parsed = guarded(lambda s: tf.io.parse_single_example(s, spec)[IMAGE_FEATURE],
                                serialized, tf.constant(""))
      is_example = fail_unless(
          parsed,
          tf.strings.format(
              f"examples[{{}}]: not a serialized tf.train.Example with one bytes feature "
              f"{IMAGE_FEATURE} ({{}} bytes that do not parse as one)",
              [i, tf.strings.length(serialized)]))
      with tf.control_dependencies([is_example]):
        encoded = tf.identity(encoded)
      return decode_checked(encoded, i, "examples", self._limits,
                            f"no {IMAGE_FEATURE} feature, or an empty one",
                            self._pre.get("jpeg_dct_method", ""))

    # The serialized examples' sizes are what the request limits count.
    return self._detect(decode_one, examples, "examples",
                        tf.cast(tf.strings.length(examples), tf.int64))

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
