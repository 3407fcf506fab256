"""tf.data input pipeline: decode, resize, flip, scale jitter, normalize, pad to static shapes,
RPN targets. A training batch has one of the configuration's canvases (`canvases.py`, chosen from
the records' sizes, never their pixels); evaluation images are padded to their own size rounded
up to 32 (or one fixed canvas).

Per-example randomness is stateless and keyed by (seed, example index), so a seeded pipeline
yields the same batches on every run, however many parallel calls decode it.
"""

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder

from rethink_tf.data import canvases as canvas_lib
from rethink_tf.data import keypoints as keypoint_lib
from rethink_tf.data.decode_guard import DAMAGED_RECORD, damaged_record_id, guarded
from rethink_tf.data.image_preprocessing import (
    RESIZE_METHODS,
    decode_image,
    fit_canvas,
    normalize_and_pad,
    resize_for_model,
    resized_size,
)
from rethink_tf.errors import ConfigError
from rethink_tf.layers import anchors as anchor_lib
from rethink_tf.layers.roi_align import roi_align_flat

# torchvision/detectron2 ImageNet statistics (RGB, 0-255); detectron2's scratch configs use them.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
JPEG_DCT_METHODS = ("", "INTEGER_FAST", "INTEGER_ACCURATE")
EVAL_CANVASES = ("fit", "fixed")


@gin.configurable
class InputConfig:
  """Everything that shapes a batch; bound in gin_configs/data/*.gin and base/*.gin."""

  def __init__(self,
               train_pattern: str = "",
               val_pattern: str = "",
               val_annotations: str = "",
               category_ids: Sequence[int] = (),
               short_side: int = 800,
               max_long_side: int = 1333,
               padded_size: Sequence[int] = (1344, 1344),
               scale_jitter: Optional[Sequence[int]] = None,
               flip: bool = True,
               max_instances: int = 100,
               max_crowd: int = 16,
               mask_crop_size: int = 56,
               pixel_mean: Sequence[float] = PIXEL_MEAN,
               pixel_std: Sequence[float] = PIXEL_STD,
               shuffle_buffer: int = 1000,
               cache: bool = False,
               synthetic=None,
               channel_order: str = "RGB",
               keypoint_names: Sequence[str] = (),
               keypoint_oks_sigmas: Sequence[float] = (),
               jpeg_dct_method: str = "",
               resize_antialias: bool = False,
               resize_method: str = "tensorflow",
               eval_canvas: str = "fit",
               size_divisibility: int = 32,
               train_canvases: Optional[Sequence[Sequence[int]]] = None,
               canvas_block_steps: int = 16,
               skip_damaged_records: bool = False):
    self.train_pattern, self.val_pattern = train_pattern, val_pattern
    self.val_annotations = val_annotations
    self.category_ids = [int(c) for c in category_ids]
    self.short_side, self.max_long_side = short_side, max_long_side
    self.padded_size = tuple(int(s) for s in padded_size)
    self.scale_jitter = tuple(scale_jitter) if scale_jitter else None
    self.flip = flip
    self.max_instances, self.max_crowd = max_instances, max_crowd
    self.mask_crop_size = mask_crop_size
    self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
    if channel_order not in ("RGB", "BGR"):
      raise ValueError(f"InputConfig.channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    self.channel_order = channel_order  # BGR for Caffe2-trained (Detectron) weights
    # "" decodes JPEGs with TensorFlow's default (libjpeg's fast integer IDCT);
    # "INTEGER_ACCURATE" is libjpeg's accurate IDCT, what PIL (detectron2) and OpenCV
    # (Detectron) decode: on the synthetic shapes the two differ by up to 7 levels on 65% of
    # the pixels. Converted detectors bind it; `decode_image` applies it.
    if jpeg_dct_method not in JPEG_DCT_METHODS:
      raise ValueError(f"InputConfig.jpeg_dct_method must be one of {JPEG_DCT_METHODS}, got "
                       f"{jpeg_dct_method!r}")
    self.jpeg_dct_method = jpeg_dct_method
    # Bilinear resizing with an antialiasing filter when shrinking, as PIL's (detectron2's
    # ResizeShortestEdge); without it (the default, OpenCV's and Detectron's), shrinking samples
    # 4 pixels per output pixel. Enlarging is the same either way.
    self.resize_antialias = resize_antialias
    # "pil": detectron2's resize (its size rule, Pillow's bilinear on the uint8 image, rounded
    # to uint8), bit for bit; converted detectron2 models bind it (`image_preprocessing`).
    if resize_method not in RESIZE_METHODS:
      raise ConfigError(f"InputConfig.resize_method must be one of {RESIZE_METHODS}, got "
                        f"{resize_method!r}")
    self.resize_method = resize_method
    # Evaluation canvases. "fit": each batch is padded only to its largest resized image,
    # rounded up to `size_divisibility` (detectron2's `ImageList.from_tensors`), so an image's
    # features do not depend on a canvas chosen for the largest possible image (GroupNorm's
    # statistics cover the padding); "fixed": every batch at `padded_size` (one static shape,
    # for XLA and TPUs).
    if eval_canvas not in EVAL_CANVASES:
      raise ConfigError(f"InputConfig.eval_canvas must be one of {EVAL_CANVASES}, got "
                        f"{eval_canvas!r}")
    self.eval_canvas = eval_canvas
    self.size_divisibility = int(size_divisibility)
    # Training canvases (`canvases.py`): None derives landscape, portrait and `padded_size`
    # from the short side; a list of one canvas ([padded_size]) trains every image on it.
    try:
      self.train_canvases = canvas_lib.check(train_canvases, self.padded_size,
                                             self.size_divisibility)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    # Canvas grouping works in blocks of this many global batches (a larger block leaves
    # fewer images over for the largest canvas; its records are held in memory, undecoded).
    self.canvas_block_steps = int(canvas_block_steps)
    self.shuffle_buffer, self.cache = shuffle_buffer, cache
    # Train past training records that fail their checksum, are cut short, do not parse, or
    # whose image does not decode or is not the size its features say (`damaged_records.repair`:
    # counted and reported); by default such a record stops the run.
    self.skip_damaged_records = skip_damaged_records
    # Keypoint R-CNN: the names of the K keypoints per instance (their left_/right_ prefixes
    # drive the flip's swap); empty: the records' keypoints are not read.
    self.keypoint_names = tuple(keypoint_names)
    # Per-keypoint OKS constants of the keypoint AP; empty: COCO's, for its 17 person
    # keypoints (any other keypoint set must bind them).
    self.keypoint_oks_sigmas = tuple(float(v) for v in keypoint_oks_sigmas)
    if self.keypoint_names and len(self.keypoint_oks_sigmas or [0] * 17) != len(
        self.keypoint_names):
      raise ConfigError(f"InputConfig.keypoint_oks_sigmas must give one value per keypoint "
                        f"({len(self.keypoint_names)}; empty means COCO's 17)")
    self.synthetic = synthetic
    if synthetic is not None and not self.category_ids:
      self.category_ids = synthetic.category_ids
    if any(s % 32 for s in self.padded_size):
      raise ValueError(f"padded_size {self.padded_size} must be multiples of 32 (FPN P5)")

  def prepare(self, training: bool = True):
    """Materializes the embedded dataset when one is configured (generated once, cached);
    otherwise checks that the data bindings are set and point at existing files (a
    ConfigError naming the binding), so a run fails before it builds a model.
    `training=False` (evaluation) does not need the training shards."""
    if self.synthetic is not None:
      paths = self.synthetic.prepare(("train", "val") if training else ("val",))
      self.train_pattern = self.train_pattern or paths["train_pattern"]
      self.val_pattern = self.val_pattern or paths["val_pattern"]
      self.val_annotations = self.val_annotations or paths["val_annotations"]
      return self
    required = [("val_pattern", self.val_pattern), ("val_annotations", self.val_annotations),
                ("category_ids", self.category_ids)]
    if training:
      required.insert(0, ("train_pattern", self.train_pattern))
    missing = [f"InputConfig.{name}" for name, value in required if not value]
    if missing:
      raise ConfigError(f"{', '.join(missing)} must be bound: no synthetic dataset is "
                        "configured (gin_configs/data/coco.gin shows the bindings)")
    for name, value in required[:-1]:
      found = tf.io.gfile.glob(value) if name.endswith("pattern") else tf.io.gfile.exists(value)
      if not found:
        raise ConfigError(f"InputConfig.{name} = {value!r} matches no file (convert the data "
                          "with rethink_tf.data.coco_tfrecord, then bind its path)")
    return self

  def canvas_list(self) -> List[Tuple[int, int]]:
    """The training canvases: bound, or derived from the short side (the top of the scale
    jitter) and `padded_size` (`canvases.derived_canvases`)."""
    if self.train_canvases is not None:
      return list(self.train_canvases)
    short = max(self.scale_jitter) if self.scale_jitter else self.short_side
    return canvas_lib.derived_canvases(self.padded_size, short, self.size_divisibility)

  @property
  def num_classes(self) -> int:
    """Contiguous classes including background (0)."""
    return len(self.category_ids) + 1


def _example_seeds(seed, index):
  """The 3 stateless seeds of one training example (resize jitter, flip, RPN sampling)."""
  return tf.random.experimental.stateless_split(
      tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)]), 3)


def _pad_to(x, n, axis0_value=0):
  """Pads or truncates the first axis of x to n."""
  x = x[:n]
  pad = n - tf.shape(x)[0]
  paddings = [[0, pad]] + [[0, 0]] * (len(x.shape) - 1)
  return tf.pad(x, paddings, constant_values=axis0_value)


class Parser:
  """Turns one decoded example into fixed-shape training or evaluation features."""

  def __init__(self, cfg: InputConfig, anchor_kwargs: Dict, rpn_kwargs: Optional[Dict] = None):
    self.cfg = cfg
    self.anchor_kwargs = anchor_kwargs
    # Made here, eagerly, for every canvas: a tensor made while a tf.data function is traced
    # belongs to that function's graph and could not be reused by another.
    self._anchors = {}
    for canvas in [cfg.padded_size] + cfg.canvas_list():
      self.canvas_anchors(canvas)
    self.anchors = self.canvas_anchors(cfg.padded_size)
    self.rpn_kwargs = rpn_kwargs or {}
    keys = tf.constant(cfg.category_ids, tf.int64)
    vals = tf.range(1, len(cfg.category_ids) + 1, dtype=tf.int32)
    self.class_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, vals),
                                                 default_value=-1)

  def canvas_anchors(self, canvas):
    """All levels' anchors of a canvas [A, 4], concatenated (the RPN head's output order)."""
    canvas = tuple(int(s) for s in canvas)
    if canvas in self._anchors:
      return self._anchors[canvas]
    levels = anchor_lib.multilevel_anchors(canvas, **self.anchor_kwargs)
    anchors = tf.concat([levels[l] for l in sorted(levels)], 0)
    if tf.executing_eagerly():
      self._anchors[canvas] = anchors
    return anchors

  def _jitter(self, seed, training):
    """The example's short side (a float32 scalar), or None (the configured one)."""
    cfg = self.cfg
    if not (training and cfg.scale_jitter):
      return None
    lo, hi = cfg.scale_jitter
    return tf.cast(tf.random.stateless_uniform([], seed, lo, hi + 1, tf.int32), tf.float32)

  def _resize(self, image, seed, training, canvas=None):
    cfg = self.cfg
    return resize_for_model(image, cfg.short_side, cfg.max_long_side, canvas or cfg.padded_size,
                            self._jitter(seed, training), cfg.resize_antialias, cfg.resize_method)

  def _normalize_and_pad(self, image, padded_size=None):
    cfg = self.cfg
    return normalize_and_pad(image, cfg.pixel_mean, cfg.pixel_std, cfg.channel_order, padded_size or
                             cfg.padded_size)

  def train_canvas(self, index, serialized, seed: int, canvases):
    """The training canvas of a record (int32 index into `canvases`), from its
    `image/height` and `image/width` features and its scale jitter: nothing is decoded."""
    cfg = self.cfg
    hw = tf.io.parse_single_example(
        serialized, {
            "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
            "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0)
        })
    h, w = tf.cast(hw["image/height"], tf.float32), tf.cast(hw["image/width"], tf.float32)
    size, _ = resized_size(h, w, cfg.short_side, cfg.max_long_side, cfg.padded_size,
                           self._jitter(_example_seeds(seed, index)[0], True), cfg.resize_method)
    return canvas_lib.canvas_index(size, canvases)

  def parse_train(self, index, data, seed: int, canvas=None):
    """One training example on `canvas` (default `padded_size`); `data` is the decoder's
    output (+ "groundtruth_keypoints" [N, K, 3] in original pixels when
    `cfg.keypoint_names`)."""
    cfg = self.cfg
    canvas = tuple(int(s) for s in (canvas or cfg.padded_size))
    seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    seeds = _example_seeds(seed[0], seed[1])
    image, _, size = self._resize(data["image"], seeds[0], True, canvas)
    boxes = data["groundtruth_boxes"] * tf.concat([size, size], 0)[None, :]
    classes = self.class_table.lookup(tf.cast(data["groundtruth_classes"], tf.int64))
    is_crowd = data["groundtruth_is_crowd"]
    masks = data["groundtruth_instance_masks"]
    crops = box_relative_masks(masks, data["groundtruth_boxes"], cfg.mask_crop_size)
    if cfg.keypoint_names:
      points = data["groundtruth_keypoints"]
      orig = tf.cast(tf.stack([data["width"], data["height"]]), tf.float32)
      xy = points[..., :2] * (size[::-1] / orig)
      points = tf.concat([tf.where(points[..., 2:] > 0, xy, 0.0), points[..., 2:]], -1)
    if cfg.flip:
      do_flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
      image = tf.cond(do_flip, lambda: tf.image.flip_left_right(image), lambda: image)
      flipped = tf.stack([boxes[:, 0], size[1] - boxes[:, 3], boxes[:, 2], size[1] - boxes[:, 1]],
                         axis=1)
      boxes = tf.where(do_flip, flipped, boxes)
      crops = tf.where(do_flip, tf.reverse(crops, axis=[2]), crops)
      if cfg.keypoint_names:
        points = tf.where(
            do_flip,
            keypoint_lib.flip_keypoints(points, size[1],
                                        keypoint_lib.flip_permutation(cfg.keypoint_names)), points)
    keep = tf.logical_and(boxes[:, 2] - boxes[:, 0] >= 1.0, boxes[:, 3] - boxes[:, 1] >= 1.0)
    valid_class = classes > 0
    inst = tf.logical_and(tf.logical_and(keep, valid_class), tf.logical_not(is_crowd))
    crowd = tf.logical_and(keep, is_crowd)
    gt_boxes = _pad_to(tf.boolean_mask(boxes, inst), cfg.max_instances)
    gt_classes = _pad_to(tf.boolean_mask(classes, inst), cfg.max_instances)
    gt_masks = _pad_to(tf.boolean_mask(crops, inst), cfg.max_instances)
    crowd_boxes = _pad_to(tf.boolean_mask(boxes, crowd), cfg.max_crowd)
    # Anchors are matched against the image's own boxes, not the padded ones (the IoU matrix is
    # [A, boxes + 1]: 4x faster labelling at 100 padded instances); one invalid box keeps the
    # matrix non-empty for images without instances or crowd regions.
    own = tf.boolean_mask(boxes, inst)[:cfg.max_instances]
    own_valid = tf.concat([tf.ones(tf.shape(own)[:1], tf.bool), [False]], 0)
    own_crowd = tf.boolean_mask(boxes, crowd)[:cfg.max_crowd]
    crowd_valid = tf.concat([tf.ones(tf.shape(own_crowd)[:1], tf.bool), [False]], 0)
    labels, targets = anchor_lib.rpn_targets(self.canvas_anchors(canvas),
                                             tf.concat([own, tf.zeros([1, 4])], 0), own_valid,
                                             tf.concat([own_crowd, tf.zeros([1, 4])], 0),
                                             crowd_valid, seeds[2], **self.rpn_kwargs)
    image = self._normalize_and_pad(image, canvas)
    extra = {}
    if cfg.keypoint_names:
      extra["gt_keypoints"] = tf.ensure_shape(
          _pad_to(tf.boolean_mask(points, inst), cfg.max_instances),
          [cfg.max_instances, len(cfg.keypoint_names), 3])
    return dict(
        images=image,
        image_size=size,
        **extra,
        gt_boxes=tf.ensure_shape(gt_boxes, [cfg.max_instances, 4]),
        gt_classes=tf.ensure_shape(gt_classes, [cfg.max_instances]),
        gt_masks=tf.ensure_shape(gt_masks, [cfg.max_instances] + [cfg.mask_crop_size] * 2),
        crowd_boxes=tf.ensure_shape(crowd_boxes, [cfg.max_crowd, 4]),
        rpn_labels=labels,
        rpn_box_targets=targets,
        # The model's in-graph RoI sampling draws from this per-example seed, so a
        # step's samples do not depend on how the batch is split over replicas, nor
        # on whether the run was restarted.
        sample_seed=tf.random.experimental.stateless_fold_in(seed, 3))

  def parse_eval(self, data):
    """One evaluation example; with `eval_canvas = "fit"` its image is padded only to its own
    size rounded up to `size_divisibility` (`make_dataset` pads each batch to its largest)."""
    image, scale, size = self._resize(data["image"], None, False)
    if self.cfg.eval_canvas == "fit":
      canvas = fit_canvas(tf.cast(size, tf.int32), self.cfg.size_divisibility)
      images = self._normalize_and_pad(image, [canvas[0], canvas[1]])
    else:
      images = self._normalize_and_pad(image)
    return dict(images=images,
                image_size=size,
                scale=scale,
                source_id=data["source_number"],
                orig_size=tf.stack([data["height"], data["width"]]))


def box_relative_masks(masks, boxes_normalized, size: int):
  """Crops each instance mask to its own box at the original resolution.

  Args:
    masks: [N, H, W] float {0, 1}; boxes_normalized: [N, 4] yxyx in [0, 1].
  Returns:
    [N, size, size] float in [0, 1] (RoIAlign with pixel-centre alignment, so small objects
    are not shifted the half pixel that `crop_and_resize`'s corner sampling costs).
  """
  n, h, w = tf.shape(masks)[0], tf.shape(masks)[1], tf.shape(masks)[2]
  hw = tf.cast(tf.stack([h, w, h, w]), tf.float32)
  boxes = (boxes_normalized * hw)[None]
  flat = tf.reshape(masks, [1, -1, 1])
  ones = tf.ones([1, n], tf.int32)
  crops = roi_align_flat(flat,
                         tf.range(n)[None] * h * w,
                         ones * h,
                         ones * w,
                         tf.ones([1, n]),
                         boxes,
                         size,
                         sampling_ratio=2,
                         aligned=True)
  return crops[0, ..., 0]


class _ExampleDecoder(tf_example_decoder.TfExampleDecoder):
  """Model Garden's tf.Example decoder with our image decoding (`decode_image`)."""

  def __init__(self, include_mask: bool, jpeg_dct_method: str):
    super().__init__(include_mask=include_mask)
    self._jpeg_dct_method = jpeg_dct_method

  def _decode_image(self, parsed_tensors):
    # An animated GIF trains and evaluates on its first frame, as it is served.
    image = decode_image(parsed_tensors["image/encoded"],
                         self._jpeg_dct_method,
                         expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def example_decoder(include_mask, num_keypoints: int = 0, jpeg_dct_method: str = ""):
  """Model Garden's tf.Example decoder, plus `image/object/keypoints` ([N, K, 3]) when
  num_keypoints > 0."""
  decoder = _ExampleDecoder(include_mask, jpeg_dct_method)
  if not num_keypoints:
    return decoder

  class WithKeypoints:

    def decode(self, serialized):
      data = decoder.decode(serialized)
      flat = tf.io.parse_single_example(serialized,
                                        {"image/object/keypoints": tf.io.VarLenFeature(tf.float32)})
      data["groundtruth_keypoints"] = tf.reshape(tf.sparse.to_dense(flat["image/object/keypoints"]),
                                                 [-1, num_keypoints, 3])
      return data

  return WithKeypoints()


def _minimal_record() -> bytes:
  """A serialized Example of a 1 x 1 image without instances: its decoded tensors stand in for
  a record that does not decode (`checked_decode`)."""

  def feature(**kw):
    return tf.train.Feature(**kw)

  png = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()
  return tf.train.Example(features=tf.train.Features(
      feature={
          "image/encoded": feature(bytes_list=tf.train.BytesList(value=[png])),
          "image/source_id": feature(bytes_list=tf.train.BytesList(value=[b"0"])),
          "image/height": feature(int64_list=tf.train.Int64List(value=[1])),
          "image/width": feature(int64_list=tf.train.Int64List(value=[1])),
      })).SerializeToString()


def checked_decode(decoder, training: bool):
  """serialized -> the decoder's dict, or a one-line InvalidArgumentError that
  `damaged_records.locate` turns into the record's shard, index and reason.

  A record that does not decode (a corrupt image or mask payload, a malformed feature, a source
  id that is not a number at evaluation) or whose image decodes to another size than its
  `image/height` and `image/width` (its boxes, masks and keypoints are in those coordinates)
  stops the stream with `DAMAGED_RECORD` and the record's fingerprint; TensorFlow's own
  errors, which name no record and may quote its bytes, are kept out by `decode_guard.guarded`.
  Everything else is used: 1 px sides, extreme aspect ratios (`resized_size` keeps every side),
  grayscale, RGBA, palette and 16-bit PNGs, CMYK JPEGs, animated GIFs (first frame).
  """
  # Eagerly, once: constants, not tensors of the graph being traced (see `Parser`).
  fallback = {k: v.numpy() for k, v in decoder.decode(tf.constant(_minimal_record())).items()}

  def decode(serialized):
    data = dict(decoder.decode(serialized))
    if not training:  # COCO evaluation needs numeric image ids
      data["source_number"] = tf.strings.to_number(data["source_id"], tf.int64)
    return data

  if not training:
    fallback["source_number"] = np.int64(0)

  def checked(serialized):
    data, ok = guarded(decode, serialized, tf.nest.map_structure(tf.constant, fallback))
    record = tf.strings.join([DAMAGED_RECORD, " ", damaged_record_id(serialized), ": "])
    decodes = tf.debugging.Assert(ok, [
        tf.strings.join([
            record, "it does not decode as a detection example (run "
            "rethink-tf-verify-tfrecords on its shard for the reason)"
        ])
    ])
    shape = tf.shape(data["image"], out_type=tf.int64)
    # Checked only for a record that decodes (the stand-in's 1 x 1 is not its size).
    size_ok = tf.logical_or(
        tf.logical_not(ok),
        tf.logical_and(tf.equal(shape[0], data["height"]), tf.equal(shape[1], data["width"])))
    sizes = tf.debugging.Assert(size_ok, [
        tf.strings.join([
            record,
            tf.strings.format(
                "image/encoded decodes to {} x {} pixels but image/height, image/width say "
                "{} x {}", [shape[0], shape[1], data["height"], data["width"]])
        ])
    ])
    with tf.control_dependencies([decodes, sizes]):
      return tf.nest.map_structure(tf.identity, data)

  return checked


def make_dataset(cfg: InputConfig,
                 training: bool,
                 batch_size: int,
                 anchor_kwargs: Dict,
                 rpn_kwargs: Optional[Dict] = None,
                 seed: Optional[int] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 start_index: int = 0,
                 files: Optional[Sequence[str]] = None,
                 group_canvases: bool = True) -> tf.data.Dataset:
  """Batched, prefetched dataset of feature dicts, every batch of one static shape (with
  several training canvases or evaluation's fitted ones, the element spec leaves H, W and the
  anchor count open; each batch's tensors have its canvas's).

  Args:
    batch_size: batch per replica (the global batch divided by the number of replicas).
    anchor_kwargs: `anchors.multilevel_anchors` arguments (levels, aspect ratios, size).
    seed: makes shuffling and augmentation reproducible; None draws a random one.
    input_context: splits the example stream between the input pipelines of a multi-worker
      job: pipeline i of n takes examples i, i + n, ... of the same seeded stream, so each step
      trains on exactly the examples a single process would (every worker reads all records,
      decodes only its own).
    start_index: training examples of this pipeline's stream already consumed (a resumed run
      passes step * examples per step): they are skipped undecoded, so the run continues with
      the same examples, augmentations and RoI samples an uninterrupted run would have seen.
    files: the shards to read instead of the pattern's (repaired copies of damaged ones).
    group_canvases: evaluation with `eval_canvas = "fit"`: batches gather images of one canvas
      (each image then sees exactly its own canvas, detectron2's at batch 1, whatever the batch
      size; batches come in the order their canvas fills them, deterministic). False: batches
      in file order, each padded to its largest image (test-time augmentation zips the scales'
      streams image by image).
  """
  pattern = cfg.train_pattern if training else cfg.val_pattern
  if files is None:
    files = sorted(tf.io.gfile.glob(pattern)) if pattern else []
  if not files:
    raise FileNotFoundError(f"no TFRecord files match {'train' if training else 'val'} pattern "
                            f"{pattern!r} (bind InputConfig.{'train' if training else 'val'}"
                            "_pattern)")
  ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 4) if training else None)
  pipelines = input_context.num_input_pipelines if input_context else 1
  parser = Parser(cfg, anchor_kwargs, rpn_kwargs)
  decode = checked_decode(
      example_decoder(include_mask=training,
                      num_keypoints=len(cfg.keypoint_names) if training else 0,
                      jpeg_dct_method=cfg.jpeg_dct_method), training)
  if training:
    seed = int(seed if seed is not None else tf.random.uniform([], 0, 2**31 - 1, tf.int64))
    if cfg.cache:
      ds = ds.cache()
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate()
    canvases = cfg.canvas_list()
    if len(canvases) == 1:
      if start_index:
        ds = ds.skip(start_index)
      if pipelines > 1:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
      ds = ds.map(lambda i, s: parser.parse_train(i, decode(s), seed, canvases[0]),
                  num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
    else:
      # One canvas per global batch, grouped on the whole stream before it is split between
      # the input pipelines, so every replica of a step gets the same canvas.
      group = batch_size * (input_context.num_replicas_in_sync if input_context else 1)
      if start_index % group:
        raise ValueError(f"start_index {start_index} is not a whole number of global batches "
                         f"of {group}")
      ds = canvas_lib.grouped_stream(ds, lambda i, s: parser.train_canvas(i, s, seed, canvases),
                                     group, cfg.canvas_block_steps, len(canvases),
                                     canvas_lib.largest(canvases), start_index // group)
      if pipelines > 1:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)

      def parse(i, s, canvas):
        data = decode(s)
        return tf.switch_case(
            canvas, [functools.partial(parser.parse_train, i, data, seed, c) for c in canvases])

      ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    ds = ds.map(lambda s: parser.parse_eval(decode(s)),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    # "fit": each image is padded to its own multiple of size_divisibility, the batch to its
    # largest (a multiple too); padding is 0 after normalization, as detectron2's.
    if cfg.eval_canvas == "fit" and group_canvases:

      def canvas_key(features):
        shape = tf.shape(features["images"], out_type=tf.int64)
        return shape[0] * (1 << 20) + shape[1]

      ds = ds.group_by_window(canvas_key,
                              lambda _, window: window.padded_batch(batch_size),
                              window_size=batch_size)
    else:
      ds = ds.padded_batch(batch_size, drop_remainder=False)
  return ds.prefetch(tf.data.AUTOTUNE)
