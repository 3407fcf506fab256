r"""Training-step throughput: our Mask R-CNN vs Model Garden's `maskrcnn_resnetfpn_coco`, built
at identical settings and timed alternately in one process (WORK IN PROGRESS).

  python -m benchmarks.train_step --size=512 --batch=2 --reps=3 --steps=2 [--norm=BN|GN]

Both read the same synthetic COCO-format TFRecords (our converter writes Model Garden's
TfExampleDecoder keys). Settings matched: ResNet-50, FPN P2-P6 256 channels, 3 anchors per
location, 2000/1000 proposals before/after NMS in training, 512 sampled RoIs, 4conv1fc box head,
4-conv mask head, 4 classes (3 + background), float32, no XLA. Still to match or document:
Model Garden samples 128 mask RoIs (ours: every foreground RoI), its FPN norm, its 0.8-1.25
scale jitter (disabled here), its L2 weight decay form.
"""

import glob
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def _synthetic_train_pattern() -> str:
  from rethink_tf import config
  from rethink_tf.data.synthetic import SyntheticDataset
  config.parse_gin(["gin_configs/data/synthetic.gin"])
  return SyntheticDataset().prepare()["train_pattern"]


def model_garden_step(size: int, batch: int, pattern: str):
  """(step(), parameter count) of Model Garden's Mask R-CNN at these settings."""
  from official.core import exp_factory, task_factory
  import official.vision  # noqa: F401  (registers the experiment)
  cfg = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco")
  cfg.runtime.mixed_precision_dtype = "float32"
  cfg.runtime.enable_xla = False
  cfg.task.init_checkpoint = None
  cfg.task.model.num_classes = 4
  cfg.task.model.input_size = [size, size, 3]
  cfg.task.train_data.input_path = pattern
  cfg.task.train_data.global_batch_size = batch
  cfg.task.train_data.shuffle_buffer_size = 64
  cfg.task.train_data.parser.aug_scale_min = 1.0
  cfg.task.train_data.parser.aug_scale_max = 1.0
  task = task_factory.get_task(cfg.task)
  model = task.build_model()
  iterator = iter(task.build_inputs(cfg.task.train_data))
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)

  @tf.function
  def step(inputs):
    return task.train_step(inputs, model, optimizer)["loss"]

  params = sum(int(tf.size(v)) for v in model.trainable_variables)
  return (lambda: float(step(next(iterator)))), params


def our_step(size: int, batch: int, norm: str):
  """(step(), parameter count) of our Mask R-CNN (paper's R50-FPN base) at these settings."""
  from rethink_tf import config
  from rethink_tf.training import distribute
  from rethink_tf.training.trainer import Trainer
  config.parse_gin(
      ["gin_configs/base/mask_rcnn_r50_fpn.gin", f"gin_configs/norm/{norm.lower()}.gin",
       "gin_configs/init/scratch.gin", "gin_configs/schedule/1x.gin",
       "gin_configs/data/synthetic.gin"],
      [f"InputConfig.short_side = {size}", f"InputConfig.max_long_side = {size}",
       f"InputConfig.padded_size = ({size}, {size})", f"TrainConfig.global_batch_size = {batch}",
       "TrainConfig.eval_image_summaries = 0", "InputConfig.flip = False"])
  trainer = Trainer(tempfile.mkdtemp(prefix="bench_"), distribute.get_strategy("one_device"))
  train_fn = trainer._make_train_fn()
  iterator = iter(trainer._dataset())
  one = tf.constant(1)
  params = sum(int(tf.size(v)) for v in trainer.model.trainable_variables)
  return (lambda: float(train_fn(iterator, one)["total_loss"])), params


def _time(step, n: int) -> float:
  t = time.perf_counter()
  for _ in range(n):
    step()
  return (time.perf_counter() - t) / n


def main(argv):
  del argv
  pattern = _synthetic_train_pattern()
  contenders = {"ours_" + FLAGS.norm: our_step(FLAGS.size, FLAGS.batch, FLAGS.norm),
                "model_garden_BN": model_garden_step(FLAGS.size, FLAGS.batch, pattern)}
  for name, (step, params) in contenders.items():
    t = time.perf_counter()
    step()  # trace + first step
    print(f"{name}: {params:,} parameters, first step {time.perf_counter() - t:.1f}s", flush=True)
  times = {name: [] for name in contenders}
  for rep in range(FLAGS.reps):  # alternate A/B so machine noise hits both
    for name, (step, _) in contenders.items():
      times[name].append(_time(step, FLAGS.steps))
      print(f"rep {rep}: {name} {times[name][-1]:.2f} s/step", flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  for k, v in med.items():
    print(f"{k}: median {v:.2f} s/step, {FLAGS.batch / v:.3f} images/s")
  ours, theirs = med["ours_" + FLAGS.norm], med["model_garden_BN"]
  print(f"throughput ratio ours/Model Garden: {theirs / ours:.2f}")


if __name__ == "__main__":
  flags.DEFINE_integer("size", 512, "Square padded input size.")
  flags.DEFINE_integer("batch", 2, "Global batch.")
  flags.DEFINE_integer("reps", 3, "Alternating repetitions.")
  flags.DEFINE_integer("steps", 2, "Steps per repetition.")
  flags.DEFINE_enum("norm", "BN", ["BN", "SyncBN", "GN"], "Our normalization.")
  app.run(main)
