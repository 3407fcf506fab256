"""What is timed: our Mask R-CNN and Model Garden's `maskrcnn_resnetfpn_coco`, built at identical
settings, each reduced to a callable that does one unit of work (a train step, an inference
batch, an input batch, a SavedModel call).

Settings shared by both (the issue's list): ResNet-50, FPN P2-P6 with 256 channels, 3 anchors
per location (aspect ratios 0.5/1/2, anchor size 8 x stride), RPN 2000 -> 1000 proposals in
training and 1000 -> 1000 at test time (NMS 0.7), 512 sampled RoIs per image with 25 %
foreground, 4conv1fc box head (256 channels, fc 1024), 4-conv mask head, 100 detections per
image, BN in the backbone, FPN and heads (our "BN"/"SyncBN" config, Model Garden's default
norm), `num_classes` classes including background, the same padded square input, the same
batch, float32 unless `precision` says otherwise. Scale jitter is off in both input pipelines
(ours has none; Model Garden's 0.8-1.25 would change the image size per step).

Differences that remain (reported by `describe()`): Model Garden samples 128 mask RoIs per
image at random from the foreground; ours feeds the mask head the first 128 RoI slots, which
hold every foreground RoI (at most 128 = 512 x 0.25), so both run the mask head on 128 RoIs per
image. Model Garden's BN has momentum 0.997 and eps 1e-4 (ours 0.9 and 1e-5, Detectron's):
same cost.
"""

import os
import tempfile
from typing import Callable, Dict, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

NUM_CLASSES = 4  # the synthetic shapes: 3 classes + background
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Work = Callable[[], None]


def gin_path(name: str) -> str:
  return os.path.join(_ROOT, "gin_configs", name)


def our_gin(size: int,
            batch: int,
            norm: str,
            precision: str = "float32",
            jit_compile: bool = False,
            extra=()):
  """Parses our gin files for the benchmark settings (R50-FPN, `norm` everywhere); `extra`
  bindings come last (they win)."""
  from rethink_tf import config
  files = [
      "base/mask_rcnn_resnet_fpn.gin", f"norm/{norm.lower()}.gin", "init/scratch.gin",
      "schedule/nx.gin", "data/synthetic.gin", "run/cluster.gin"
  ]
  config.parse_gin([gin_path(f) for f in files], [
      "nx_schedule.num_x = 1", f"InputConfig.short_side = {size}",
      f"InputConfig.max_long_side = {size}", f"InputConfig.padded_size = ({size}, {size})",
      f"TrainConfig.global_batch_size = {batch}", "TrainConfig.eval_image_summaries = 0",
      "InputConfig.flip = False", f"TrainConfig.precision = '{precision}'",
      f"TrainConfig.jit_compile = {jit_compile}", *extra
  ])


def synthetic_train_pattern() -> str:
  """The synthetic COCO-format TFRecords (JPEG-encoded images; generated once, then cached).
  Our converter writes Model Garden's TfExampleDecoder keys, so both read the same files."""
  from rethink_tf import config
  from rethink_tf.data.synthetic import SyntheticDataset
  config.parse_gin([gin_path("data/synthetic.gin")])
  return SyntheticDataset().prepare()["train_pattern"]


def _param_count(model) -> int:
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


# -- ours -------------------------------------------------------------------------------------


def our_trainer(size, batch, norm, precision="float32", jit_compile=False):
  from rethink_tf.training import distribute
  from rethink_tf.training.task import detection_trainer
  our_gin(size, batch, norm, precision, jit_compile)
  return detection_trainer(tempfile.mkdtemp(prefix="bench_"), distribute.get_strategy("one_device"))


def our_train(size, batch, norm="BN", precision="float32", jit_compile=False):
  """One training step (forward, losses, backward, SGD update) per call."""
  trainer = our_trainer(size, batch, norm, precision, jit_compile)
  train_fn = trainer.task.train_function()
  iterator = iter(trainer.task.dataset())
  one = tf.constant(1)
  work = lambda: train_fn(iterator, one)[0]["total_loss"].numpy()
  return work, {"params": _param_count(trainer.model)}


def our_infer(size, batch, norm="BN", precision="float32"):
  """One inference batch (padded float images -> boxes, scores, classes, 28x28 masks)."""
  from rethink_tf.modeling.build import build_model
  our_gin(size, batch, norm, precision)
  tf_keras.mixed_precision.set_global_policy(precision)
  model = build_model(num_classes=NUM_CLASSES, image_size=(size, size))
  images = tf.random.uniform([batch, size, size, 3], -2.0, 2.0, seed=1)
  image_size = tf.fill([batch, 2], float(size))
  detect = tf.function(model.detect)
  work = lambda: detect(images, image_size)["masks"].numpy()
  work()  # builds the variables
  return work, {"params": _param_count(model)}


def our_input(size, batch, norm="BN"):
  """One training batch from our input pipeline: read, decode JPEG, resize, pad, anchor
  labels, box-relative mask crops."""
  trainer = our_trainer(size, batch, norm)
  iterator = iter(trainer.task.dataset())
  return (lambda: tf.nest.map_structure(lambda t: t.numpy(), next(iterator))), {}


def our_export(size, batch, export_dir, norm="BN"):
  """Our SavedModel (every signature; serving_default takes uint8 images) of a freshly
  initialized model."""
  import rethink_tf.serving.export_saved_model as exporter
  trainer = our_trainer(size, batch, norm)
  ckpt = tf.train.Checkpoint(model=trainer.model).save(os.path.join(trainer.model_dir, "ckpt"))
  return exporter.export(ckpt, export_dir, batch_size=batch, version=1)


# -- COCO shapes ------------------------------------------------------------------------------

# The paper's 800/1333 halved, so a CPU run stays short; images are generated at half their
# COCO size, so each is enlarged to short side 400 as COCO's 640 x 480 photos are to 800.
COCO_SHORT, COCO_LONG, COCO_CANVAS = 400, 667, 672
# Model Garden pads its square input to a multiple of 2^max_level = 64.
MG_COCO_INPUT = 704


def coco_image_sizes(scale: float = 0.5):
  """(h, w) of the 100 COCO val2014 images of pycocotools' evaluation fixture, times `scale`."""
  import json
  with open(os.path.join(_ROOT, "benchmarks", "coco_val2014_100_sizes.json")) as f:
    sizes = json.load(f)["sizes"]
  return [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in sizes]


def coco_shaped_gin(canvas: str):
  """Gin bindings of the COCO-shaped runs: synthetic images of COCO's shapes, resized to
  400/667; `canvas` "fit" (the derived landscape, portrait and square canvases) or "square"
  (one 672 x 672 canvas, as before canvases existed)."""
  params = [
      f"SyntheticDataset.image_sizes = {coco_image_sizes()}", "SyntheticDataset.num_train = 200",
      "SyntheticDataset.num_val = 50", f"InputConfig.short_side = {COCO_SHORT}",
      f"InputConfig.max_long_side = {COCO_LONG}",
      f"InputConfig.padded_size = ({COCO_CANVAS}, {COCO_CANVAS})"
  ]
  if canvas == "square":
    params += [
        f"InputConfig.train_canvases = [({COCO_CANVAS}, {COCO_CANVAS})]",
        "InputConfig.eval_canvas = 'fixed'"
    ]
  return params


def coco_shaped_pattern() -> str:
  """The COCO-shaped synthetic training TFRecords (generated once, then cached)."""
  from rethink_tf import config
  from rethink_tf.data.synthetic import SyntheticDataset
  config.parse_gin([gin_path("data/synthetic.gin")], coco_shaped_gin("fit")[:3])
  return SyntheticDataset().prepare()["train_pattern"]


def coco_shaped_pixels(batch: int, block_steps: int = 16) -> Dict[str, float]:
  """Mean canvas pixels per image on the COCO shapes: our canvases as training groups them
  (global batch `batch`), one evaluation image at its tightest canvas (detectron2's rule:
  rounded up to 32), and one square canvas (ours before canvases, Model Garden's)."""
  from rethink_tf.data import canvases as canvas_lib
  from rethink_tf.data.image_preprocessing import resized_size
  from rethink_tf.data.input_pipeline import InputConfig
  cfg = InputConfig(short_side=COCO_SHORT,
                    max_long_side=COCO_LONG,
                    padded_size=(COCO_CANVAS, COCO_CANVAS))
  sizes = np.stack([
      resized_size(h, w, COCO_SHORT, COCO_LONG, cfg.padded_size)[0].numpy()
      for h, w in coco_image_sizes()
  ])
  rng = np.random.default_rng(0)
  block = batch * block_steps
  stream = np.concatenate([sizes[rng.permutation(len(sizes))] for _ in range(block)])[:block * 4]
  ratio, _ = canvas_lib.pixel_ratio(stream, cfg.canvas_list(), 32, batch, block_steps)
  fit = np.ceil(stream / 32) * 32
  d2 = float(np.mean(fit[:, 0] * fit[:, 1]))
  return dict(ours_train_canvases=ratio * d2,
              detectron2_rule=d2,
              square=float(COCO_CANVAS**2),
              model_garden=float(MG_COCO_INPUT**2),
              image=float(np.mean(stream[:, 0] * stream[:, 1])))


def our_coco_train(batch, canvas, norm="BN"):
  """One training step on COCO-shaped images, on fitted canvases or one square."""
  from rethink_tf.training import distribute
  from rethink_tf.training.task import detection_trainer
  our_gin(COCO_CANVAS, batch, norm, extra=coco_shaped_gin(canvas))
  trainer = detection_trainer(tempfile.mkdtemp(prefix="bench_"),
                              distribute.get_strategy("one_device"))
  train_fn = trainer.task.train_function()
  iterator = iter(trainer.task.dataset())
  one = tf.constant(1)
  work = lambda: train_fn(iterator, one)[0]["total_loss"].numpy()
  return work, {
      "params": _param_count(trainer.model),
      "canvases": [list(c) for c in trainer.task.input_cfg.canvas_list()]
  }


def our_coco_infer(batch, canvas, norm="BN"):
  """One inference batch of COCO-shaped images: on "fit", batches of one canvas each padded
  to its images' size rounded up to 32 (the evaluation pipeline's grouping), else on the
  672 x 672 square. Cycles over the validation images."""
  from rethink_tf.data.input_pipeline import InputConfig, make_dataset
  from rethink_tf.evaluation.evaluator import detect_function
  from rethink_tf.modeling.build import build_model
  our_gin(COCO_CANVAS, batch, norm, extra=coco_shaped_gin(canvas))
  cfg = InputConfig().prepare(training=False)
  model = build_model(num_classes=NUM_CLASSES, image_size=(COCO_CANVAS, COCO_CANVAS))
  batches = [(b["images"], b["image_size"])
             for b in make_dataset(cfg, False, batch, model.anchor_kwargs)
             if b["images"].shape[0] == batch]
  detect = detect_function(model, any_canvas=canvas == "fit")
  state = {"i": 0}

  def work():
    images, sizes = batches[state["i"] % len(batches)]
    state["i"] += 1
    return detect(images, sizes)["masks"].numpy()

  return work, {"params": 0, "batches": len(batches)}


# -- Model Garden -------------------------------------------------------------------------------


def mg_coco_train(batch):
  """Model Garden at its own COCO setting (one square input, the long side resized to it,
  704: its pad to a multiple of 64) on the COCO-shaped images."""
  return mg_train(MG_COCO_INPUT, batch, coco_shaped_pattern())


def mg_config(size, batch, pattern="", precision="float32"):
  import official.vision  # noqa: F401  (registers the experiment)
  from official.core import exp_factory
  cfg = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco")
  cfg.runtime.mixed_precision_dtype = "bfloat16" if "bfloat16" in precision else "float32"
  cfg.task.init_checkpoint = None
  cfg.task.model.num_classes = NUM_CLASSES
  cfg.task.model.input_size = [size, size, 3]
  cfg.task.model.detection_generator.max_num_detections = 100
  cfg.task.train_data.input_path = pattern
  cfg.task.train_data.global_batch_size = batch
  cfg.task.train_data.shuffle_buffer_size = 64
  cfg.task.train_data.parser.aug_scale_min = 1.0
  cfg.task.train_data.parser.aug_scale_max = 1.0
  return cfg


def _mg_task(cfg):
  from official.core import task_factory
  from official.modeling import performance
  performance.set_mixed_precision_policy(cfg.runtime.mixed_precision_dtype)
  task = task_factory.get_task(cfg.task)
  return task, task.build_model()


def mg_train(size, batch, pattern, precision="float32"):
  cfg = mg_config(size, batch, pattern, precision)
  task, model = _mg_task(cfg)
  iterator = iter(task.build_inputs(cfg.task.train_data))
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)

  @tf.function
  def step(inputs):
    return task.train_step(inputs, model, optimizer)["loss"]

  work = lambda: step(next(iterator)).numpy()
  return work, {"params": _param_count(model)}


def _mg_anchors(cfg, batch):
  from official.vision.ops import anchor
  m = cfg.task.model
  boxes = anchor.Anchor(min_level=m.min_level,
                        max_level=m.max_level,
                        num_scales=m.anchor.num_scales,
                        aspect_ratios=m.anchor.aspect_ratios,
                        anchor_size=m.anchor.anchor_size,
                        image_size=m.input_size[:2]).multilevel_boxes
  return {k: tf.tile(v[None], [batch, 1, 1, 1]) for k, v in boxes.items()}


def mg_infer(size, batch, precision="float32"):
  cfg = mg_config(size, batch, precision=precision)
  _, model = _mg_task(cfg)
  images = tf.random.uniform([batch, size, size, 3], -2.0, 2.0, seed=1)
  image_shape = tf.fill([batch, 2], float(size))
  anchors = _mg_anchors(cfg, batch)
  call = tf.function(lambda: model(images, image_shape, anchors, training=False))
  work = lambda: call()["detection_masks"].numpy()
  work()
  return work, {"params": _param_count(model)}


def mg_input(size, batch, pattern):
  cfg = mg_config(size, batch, pattern)
  from official.core import task_factory
  task = task_factory.get_task(cfg.task)
  iterator = iter(task.build_inputs(cfg.task.train_data))
  return (lambda: tf.nest.map_structure(lambda t: t.numpy(), next(iterator))), {}


def mg_export(size, batch, export_dir):
  """Model Garden's own export (`export_inference_graph`, input_type image_tensor: uint8
  images) of a freshly initialized model."""
  from official.vision.serving import export_saved_model_lib
  cfg = mg_config(size, batch)
  _, model = _mg_task(cfg)
  model(tf.zeros([1, size, size, 3]),
        tf.fill([1, 2], float(size)),
        _mg_anchors(cfg, 1),
        training=False)
  ckpt = tf.train.Checkpoint(model=model).write(os.path.join(tempfile.mkdtemp(), "ckpt"))
  export_saved_model_lib.export_inference_graph(input_type="image_tensor",
                                                batch_size=batch,
                                                input_image_size=[size, size],
                                                params=cfg,
                                                checkpoint_path=ckpt,
                                                export_dir=export_dir)
  return export_dir


# -- SavedModels ------------------------------------------------------------------------------


def saved_model_call(path, size, batch, photo=None) -> Tuple[Work, Dict]:
  """Loads the SavedModel at `path`; work = one call of serving_default on uint8 images:
  random size x size ones, or `batch` copies of the decoded JPEG `photo` (`phone_photo`)."""
  loaded = tf.saved_model.load(path)
  fn = loaded.signatures["serving_default"]
  key = list(fn.structured_input_signature[1])[0]
  if photo:
    with open(phone_photo(photo), "rb") as f:
      images = tf.tile(tf.io.decode_jpeg(f.read(), channels=3)[None], [batch, 1, 1, 1])
  else:
    images = tf.cast(tf.random.uniform([batch, size, size, 3], 0, 255, seed=1), tf.uint8)
  work = lambda: [t.numpy() for t in fn(**{key: images}).values()]
  return work, {"loaded": loaded}


def phone_photo(path: str, height: int = 3024, width: int = 4032) -> str:
  """A phone camera's 12 MP JPEG (quality 85): the first synthetic validation image upscaled
  with mild sensor-like noise; written once to `path`."""
  if os.path.exists(path):
    return path
  from rethink_tf import config
  from rethink_tf.data.synthetic import SyntheticDataset
  config.parse_gin([gin_path("data/synthetic.gin")])
  files = sorted(tf.io.gfile.glob(SyntheticDataset().prepare()["val_pattern"]))
  record = next(iter(tf.data.TFRecordDataset(files)))
  encoded = tf.io.parse_single_example(record,
                                       {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
  image = tf.io.decode_jpeg(encoded["image/encoded"], channels=3)
  big = tf.image.resize(image, [height, width], method="bicubic")
  big += tf.random.stateless_normal(big.shape, [1, 2]) * 4
  data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(big), 0, 255), tf.uint8), quality=85)
  with open(path + ".tmp", "wb") as f:
    f.write(data.numpy())
  os.replace(path + ".tmp", path)
  return path


# -- evaluation -------------------------------------------------------------------------------


def eval_subset(num_images: int) -> Tuple[str, str]:
  """The first `num_images` synthetic validation images as one TFRecord and a COCO JSON that
  holds exactly them (so COCOeval's work is the same for both); returns (pattern, json path).
  """
  import json

  from rethink_tf import config
  from rethink_tf.data.synthetic import SyntheticDataset
  config.parse_gin([gin_path("data/synthetic.gin")])
  prepared = SyntheticDataset().prepare()
  out = os.path.join(os.path.dirname(prepared["val_annotations"]), f"bench_val_{num_images}")
  pattern, ann = out + ".tfrecord", out + ".json"
  if os.path.exists(ann):
    return pattern, ann
  files = sorted(tf.io.gfile.glob(prepared["val_pattern"]))
  records = list(tf.data.TFRecordDataset(files).take(num_images).as_numpy_iterator())
  ids = set()
  for r in records:
    ex = tf.train.Example.FromString(r)
    ids.add(int(ex.features.feature["image/source_id"].bytes_list.value[0]))
  with open(prepared["val_annotations"]) as f:
    coco = json.load(f)
  coco["images"] = [im for im in coco["images"] if im["id"] in ids]
  coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
  with tf.io.TFRecordWriter(pattern + ".tmp") as w:
    for r in records:
      w.write(r)
  os.replace(pattern + ".tmp", pattern)
  with open(ann + ".tmp", "w") as f:
    json.dump(coco, f)
  os.replace(ann + ".tmp", ann)
  return pattern, ann


def our_eval(size, batch, num_images, norm="BN"):
  """One evaluation pass: inference, masks pasted and RLE-encoded, COCOeval box + mask."""
  from rethink_tf.data.input_pipeline import InputConfig
  from rethink_tf.detector import apply_input_convention
  from rethink_tf.evaluation.evaluator import run_evaluation
  from rethink_tf.modeling.build import build_model
  pattern, ann = eval_subset(num_images)
  our_gin(size, batch, norm)
  cfg = apply_input_convention(InputConfig(val_pattern=pattern, val_annotations=ann))
  model = build_model(num_classes=NUM_CLASSES, image_size=(size, size))
  return (lambda: run_evaluation(model, cfg, batch)), {"images": num_images}


def mg_eval(size, batch, num_images):
  """Model Garden's validation loop (validation_step, aggregate_logs, reduce with its COCO
  evaluator: box + mask) over the same images."""
  pattern, ann = eval_subset(num_images)
  cfg = mg_config(size, batch)
  cfg.task.annotation_file = ann
  cfg.task.validation_data.input_path = pattern
  cfg.task.validation_data.global_batch_size = batch
  cfg.task.validation_data.drop_remainder = False
  task, model = _mg_task(cfg)
  task.build_metrics(training=False)  # creates its COCO evaluator
  dataset = task.build_inputs(cfg.task.validation_data)
  step = tf.function(lambda inputs: task.validation_step(inputs, model))

  def work():
    state = None
    for inputs in dataset:
      state = task.aggregate_logs(state, step(inputs))
    return task.reduce_aggregated_logs(state)

  return work, {"images": num_images}
