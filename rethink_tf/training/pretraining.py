"""The classification pre-training stage (the miniature study's "ImageNet"): config, model,
input stream and its task on the generic training loop (strategies, SIGTERM saves and resume
come with it). Entry point: `python -m rethink_tf.pretrain` (its docstring lists what is
written).

The backbone is the one `build_model` binds in the same gin files (depth, width, blocks, norm),
so the checkpoint fits the detector. It is trained with global average pooling and a linear
classifier (the ImageNet recipe: SGD with momentum, weight decay, linear warmup then cosine
decay, flip and shift augmentation) on the synthetic classification set of
`data/synthetic_classification.py`, at a smaller image size than detection, as ImageNet's 224 px
is to COCO's 800 px.
"""

import json
import math
import os
import time
from typing import List, Optional

import gin
import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from rethink_tf.checkpoint import init as init_lib
from rethink_tf.data import synthetic_classification
from rethink_tf.data.input_pipeline import PIXEL_MEAN, PIXEL_STD
from rethink_tf.modeling.build import build_backbone
from rethink_tf.training import distribute, divergence
from rethink_tf.training import hooks as hooks_lib
from rethink_tf.training import optimizer as opt_lib
from rethink_tf.training.trainer import Trainer, in_graph_loop

BACKBONE_PREFIX = "backbone"


@gin.configurable
class PretrainConfig:
  """The classification stage. `steps` x `batch_size` is the number of images seen."""

  def __init__(self,
               num_train: int = 20000,
               num_val: int = 1000,
               image_size: int = 64,
               seed: int = 0,
               batch_size: int = 64,
               steps: int = 2000,
               base_lr: float = 0.1,
               warmup_steps: int = 100,
               momentum: float = 0.9,
               weight_decay: float = 1e-4,
               log_every_steps: int = 50,
               eval_every_steps: int = 500,
               checkpoint_every_steps: int = 500):
    self.num_train, self.num_val, self.image_size = num_train, num_val, image_size
    self.seed, self.batch_size, self.steps = seed, batch_size, steps
    self.base_lr, self.warmup_steps, self.momentum = base_lr, warmup_steps, momentum
    self.weight_decay = weight_decay
    self.log_every_steps, self.eval_every_steps = log_every_steps, eval_every_steps
    self.checkpoint_every_steps = checkpoint_every_steps

  def lr_at(self, step):
    """Linear warmup from 0.1 x base, then cosine decay to 0 at `steps` (tensor or number)."""
    step = tf.cast(step, tf.float32)
    warm = tf.minimum(step / max(self.warmup_steps, 1), 1.0)
    cosine = 0.5 * (1 + tf.cos(math.pi * tf.minimum(step / self.steps, 1.0)))
    return self.base_lr * (0.1 + 0.9 * warm) * cosine


class _LearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):

  def __init__(self, cfg: PretrainConfig):
    super().__init__()
    self.cfg = cfg

  def __call__(self, step):
    return self.cfg.lr_at(step)


class Classifier(tf_keras.Model):
  """backbone -> global average pool of its last level -> linear layer (logits [B, classes])."""

  def __init__(self, backbone, num_classes: int):
    super().__init__(name="classifier")
    self.backbone = backbone
    self.pool = tf_keras.layers.GlobalAveragePooling2D()
    self.fc = tf_keras.layers.Dense(
        num_classes, kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01), name="fc")

  def call(self, images, training=None):
    feats = self.backbone(images, training=training)
    return self.fc(self.pool(feats[max(feats)]))


def _normalize(images):
  return (tf.cast(images, tf.float32) - tf.constant(PIXEL_MEAN)) / tf.constant(PIXEL_STD)


def _train_dataset(images: np.ndarray,
                   labels: np.ndarray,
                   cfg: PretrainConfig,
                   start_step: int,
                   input_context: Optional[tf.distribute.InputContext] = None):
  """Shuffled, augmented (flip, shift by up to 1/8 of the size) batches from `start_step` on
  (this input pipeline's share of each global batch)."""
  size, pad = cfg.image_size, cfg.image_size // 8

  def augment(image, label, seed):
    image = tf.image.stateless_random_flip_left_right(image, seed)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed + 1)
    return _normalize(image), label

  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  ds = ds.shuffle(len(images), seed=cfg.seed, reshuffle_each_iteration=True).repeat()
  ds = ds.skip(start_step * cfg.batch_size)  # a resumed run continues the same stream
  seeds = tf.data.Dataset.random(seed=cfg.seed).batch(2)
  ds = tf.data.Dataset.zip((ds, seeds)).map(lambda x, s: augment(x[0], x[1], s),
                                            num_parallel_calls=tf.data.AUTOTUNE)
  batch = cfg.batch_size
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    batch = input_context.get_per_replica_batch_size(cfg.batch_size)
  elif input_context is not None:
    batch = input_context.get_per_replica_batch_size(cfg.batch_size)
  return ds.batch(batch, drop_remainder=True).prefetch(2)


def _accuracy(model, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
  correct = 0
  for i in range(0, len(images), batch):
    logits = model(_normalize(images[i:i + batch]), training=False)
    correct += int(np.sum(np.argmax(logits.numpy(), -1) == labels[i:i + batch]))
  return correct / len(images)


class ClassificationTask:
  """The classifier of `backbone`, its optimizer, data and step under `strategy` (the task
  interface of `trainer.py`); the loss is the global batch's mean cross-entropy."""

  def __init__(self, strategy: tf.distribute.Strategy, cfg: PretrainConfig, backbone, train_data):
    self.strategy, self.cfg = strategy, cfg
    self.backbone, self.train_data = backbone, train_data
    if cfg.batch_size % strategy.num_replicas_in_sync:
      raise ValueError(f"PretrainConfig.batch_size {cfg.batch_size} is not divisible by "
                       f"{strategy.num_replicas_in_sync} replicas")
    with strategy.scope():
      self.model = Classifier(backbone, len(synthetic_classification.CLASS_NAMES))
      self.model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]))
      self.optimizer = tf_keras.optimizers.SGD(learning_rate=_LearningRate(cfg),
                                               momentum=cfg.momentum)
      self.optimizer.build(self.model.trainable_variables)
      self.skipped_steps = tf.Variable(0,
                                       dtype=tf.int64,
                                       trainable=False,
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.steps_in_call = tf.Variable(0, trainable=False, name="steps_in_call")
    self.decay_vars = opt_lib.decayed_variables(self.model)
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
    self.loss_keys: List[str] = ["loss", "top1"]

  total_steps = property(lambda self: self.cfg.steps)
  global_batch_size = property(lambda self: self.cfg.batch_size)

  def learning_rate(self, step: int) -> float:
    return float(self.cfg.lr_at(step))

  def describe(self) -> str:
    c = self.cfg
    return (f"pre-training: {c.steps} steps at batch {c.batch_size}, LR {c.base_lr:g} after "
            f"{c.warmup_steps} warmup steps, cosine decay")

  def run_record(self):
    return None

  def restore_or_initialize(self, model_dir: str) -> int:
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
      logging.info(f"resumed from {latest}")
    return int(self.optimizer.iterations.numpy())

  def dataset(self, start_step: int = 0):
    images, labels = self.train_data
    return self.strategy.distribute_datasets_from_function(
        lambda ctx: _train_dataset(images, labels, self.cfg, start_step, ctx))

  def train_function(self):
    """(iterator, num_steps) -> (last step's {loss, top1}, steps run, applied); stops after a
    step that was not applied (a non-finite loss or gradient)."""
    strategy, model, optimizer, cfg = self.strategy, self.model, self.optimizer, self.cfg
    replicas = strategy.num_replicas_in_sync
    decay_vars, skipped, steps_in_call = self.decay_vars, self.skipped_steps, self.steps_in_call

    def replica_step(images, labels):
      with tf.GradientTape() as tape:
        logits = model(images, training=True)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels,
                                                                          logits)) / cfg.batch_size
        loss = ce + opt_lib.weight_decay_loss(decay_vars, cfg.weight_decay) / replicas
      grads = tape.gradient(loss, model.trainable_variables)
      finite = divergence.all_finite(loss, grads)
      if replicas > 1:
        bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                             1.0 - tf.cast(finite, tf.float32))
        finite = tf.equal(bad, 0.0)
      applied = divergence.apply_gradients_if(optimizer, zip(grads, model.trainable_variables),
                                              finite, skipped)
      correct = tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), labels), tf.float32)
      return {"loss": ce, "top1": tf.reduce_sum(correct) / cfg.batch_size}, applied

    def global_step(batch):
      per_replica, applied = strategy.run(replica_step, args=batch)
      values = {
          k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
          for k, v in per_replica.items()
      }
      applied = tf.equal(
          strategy.reduce(tf.distribute.ReduceOp.SUM, tf.cast(applied, tf.int32), axis=None),
          replicas)
      return values, applied

    return in_graph_loop(global_step, self.loss_keys, steps_in_call)


class ValidationAccuracy(hooks_lib.Hook):
  """Top-1 on the held-out set every `every_steps` and at the end: `eval/top1`, a printed
  line, and `trainer.metrics = {"top1": ...}`."""

  def __init__(self, every_steps: int, images: np.ndarray, labels: np.ndarray):
    self.every_steps, self.images, self.labels = every_steps, images, labels

  def steps_to_next(self, step):
    return self.every_steps - step % self.every_steps if self.every_steps else None

  def after_step(self, step, result):
    t = self.trainer
    if (self.every_steps and step % self.every_steps == 0) or step == t.task.total_steps:
      top1 = _accuracy(t.model, self.images, self.labels)
      with t.summary_writer("eval").as_default(step=step):
        tf.summary.scalar("top1", top1)
      logging.info(f"pretrain step {step}: validation top-1 {top1:.3f}")
      t.metrics = {"top1": top1}


def pretrain(model_dir: str,
             cfg: Optional[PretrainConfig] = None,
             strategy: Optional[tf.distribute.Strategy] = None) -> Optional[dict]:
  """Runs (or resumes) the classification stage; returns the metadata written to backbone.json,
  or None when a SIGTERM stopped it (run it again to resume). A non-finite step raises
  FloatingPointError naming it."""
  cfg = cfg or PretrainConfig()
  strategy = strategy or distribute.get_strategy("one_device")
  meta_path = os.path.join(model_dir, BACKBONE_PREFIX + ".json")
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    logging.info(
        f"{meta_path} exists: pre-training already complete ({meta['images_seen']} images)")
    return meta
  os.makedirs(model_dir, exist_ok=True)
  tf_keras.utils.set_random_seed(cfg.seed)
  t = time.time()
  train_x, train_y = synthetic_classification.generate(cfg.num_train, cfg.seed, cfg.image_size)
  val_x, val_y = synthetic_classification.generate(cfg.num_val, cfg.seed + 1, cfg.image_size)
  logging.info(f"synthetic classification set: {cfg.num_train} train / {cfg.num_val} val images, "
               f"{len(synthetic_classification.CLASS_NAMES)} classes, {cfg.image_size} px "
               f"({time.time() - t:.1f}s)")
  with strategy.scope():
    backbone = build_backbone()
  task = ClassificationTask(strategy, cfg, backbone, (train_x, train_y))
  hooks = [
      hooks_lib.DivergenceGuard(
          0, advice="lower PretrainConfig.base_lr or lengthen PretrainConfig.warmup_steps"),
      hooks_lib.Progress(cfg.log_every_steps, scalar_prefix="", first_step=False),
      hooks_lib.Checkpointer(cfg.checkpoint_every_steps, keep=2),
      ValidationAccuracy(cfg.eval_every_steps, val_x, val_y),
  ]
  trainer = Trainer(task, hooks, model_dir)
  metrics = trainer.train()
  if trainer.preempted:
    return None
  val_top1 = metrics["top1"] if metrics else _accuracy(task.model, val_x, val_y)

  init_lib.save_backbone(backbone, os.path.join(model_dir, BACKBONE_PREFIX))
  meta = {
      "images_seen": cfg.steps * cfg.batch_size,
      "steps": cfg.steps,
      "batch_size": cfg.batch_size,
      "image_size": cfg.image_size,
      "num_train": cfg.num_train,
      "num_val": cfg.num_val,
      "classes": list(synthetic_classification.CLASS_NAMES),
      "val_top1": val_top1,
      "source": "rethink_tf.pretrain on the synthetic classification set",
      # The detector's own pipeline convention, so fine-tuning sees the same pixels.
      "channel_order": "RGB",
      "pixel_mean": list(PIXEL_MEAN),
      "pixel_std": list(PIXEL_STD),
      **backbone.weight_convention(),
  }
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(meta_path + ".tmp", meta_path)
  logging.info(
      f"wrote {os.path.join(model_dir, BACKBONE_PREFIX)} (validation top-1 {val_top1:.3f}, "
      f"{meta['images_seen']} images seen)")
  return meta
