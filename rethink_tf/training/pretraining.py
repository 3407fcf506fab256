"""The classification pre-training stage (the miniature study's "ImageNet"): config, model,
input stream and loop. Entry point: `python -m rethink_tf.pretrain` (its docstring lists what is
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
import sys
import time

import gin
import numpy as np
import tensorflow as tf
import tf_keras

from rethink_tf.data import synthetic_classification
from rethink_tf.data.input_pipeline import PIXEL_MEAN, PIXEL_STD
from rethink_tf.modeling import init as init_lib
from rethink_tf.modeling.build import build_model
from rethink_tf.training import divergence
from rethink_tf.training import optimizer as opt_lib

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


def _train_dataset(images: np.ndarray, labels: np.ndarray, cfg: PretrainConfig, start_step: int):
  """Shuffled, augmented (flip, shift by up to 1/8 of the size) batches from `start_step` on."""
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
  return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(2)


def _accuracy(model, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
  correct = 0
  for i in range(0, len(images), batch):
    logits = model(_normalize(images[i:i + batch]), training=False)
    correct += int(np.sum(np.argmax(logits.numpy(), -1) == labels[i:i + batch]))
  return correct / len(images)


def pretrain(model_dir: str, cfg: PretrainConfig = None) -> dict:
  """Runs (or resumes) the classification stage; returns the metadata written to backbone.json."""
  cfg = cfg or PretrainConfig()
  meta_path = os.path.join(model_dir, BACKBONE_PREFIX + ".json")
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    print(f"{meta_path} exists: pre-training already complete ({meta['images_seen']} images)",
          flush=True)
    return meta
  os.makedirs(model_dir, exist_ok=True)
  tf_keras.utils.set_random_seed(cfg.seed)
  t = time.time()
  train_x, train_y = synthetic_classification.generate(cfg.num_train, cfg.seed, cfg.image_size)
  val_x, val_y = synthetic_classification.generate(cfg.num_val, cfg.seed + 1, cfg.image_size)
  print(
      f"synthetic classification set: {cfg.num_train} train / {cfg.num_val} val images, "
      f"{len(synthetic_classification.CLASS_NAMES)} classes, {cfg.image_size} px "
      f"({time.time() - t:.1f}s)",
      flush=True)

  detector = build_model(num_classes=2, image_size=(cfg.image_size, cfg.image_size))
  backbone = detector.backbone
  model = Classifier(backbone, len(synthetic_classification.CLASS_NAMES))
  model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]))
  optimizer = tf_keras.optimizers.SGD(learning_rate=_LearningRate(cfg), momentum=cfg.momentum)
  optimizer.build(model.trainable_variables)
  decay_vars = opt_lib.decayed_variables(model)
  ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(ckpt, model_dir, max_to_keep=2)
  if manager.latest_checkpoint:
    ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    print(f"resumed from {manager.latest_checkpoint}", flush=True)
  start = int(optimizer.iterations.numpy())
  skipped = tf.Variable(0, dtype=tf.int64, trainable=False)

  @tf.function
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      loss = ce + opt_lib.weight_decay_loss(decay_vars, cfg.weight_decay)
    grads = tape.gradient(loss, model.trainable_variables)
    # A non-finite step is never applied; the loop below stops the run at it.
    divergence.apply_gradients_if(optimizer, zip(grads, model.trainable_variables),
                                  divergence.all_finite(loss, grads), skipped)
    top1 = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), labels), tf.float32))
    return ce, top1

  train_writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
  eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
  data = iter(_train_dataset(train_x, train_y, cfg, start))
  val_top1 = None
  t0, s0 = time.time(), start
  for step in range(start + 1, cfg.steps + 1):
    images, labels = next(data)
    ce, top1 = train_step(images, labels)
    if int(skipped.numpy()):
      sys.exit("pre-training: " + divergence.nonfinite_message(
          step, {"loss": float(ce)},
          int(skipped.numpy()),
          0,
          manager.latest_checkpoint,
          advice="lower PretrainConfig.base_lr or lengthen PretrainConfig.warmup_steps"))
    if step % cfg.log_every_steps == 0 or step == cfg.steps:
      rate = (step - s0) / max(time.time() - t0, 1e-9)
      lr = float(cfg.lr_at(step))
      with train_writer.as_default(step=step):
        tf.summary.scalar("loss", ce)
        tf.summary.scalar("top1", top1)
        tf.summary.scalar("learning_rate", lr)
        tf.summary.scalar("steps_per_sec", rate)
      eta = (cfg.steps - step) / max(rate, 1e-9)
      print(
          f"pretrain step {step}/{cfg.steps} loss {float(ce):.3f} top1 {float(top1):.3f} "
          f"lr {lr:.4f} {rate:.2f} steps/s {rate * cfg.batch_size:.0f} img/s ETA "
          f"{int(eta // 60)}m{int(eta % 60):02d}s",
          flush=True)
    if step % cfg.eval_every_steps == 0 or step == cfg.steps:
      val_top1 = _accuracy(model, val_x, val_y)
      with eval_writer.as_default(step=step):
        tf.summary.scalar("top1", val_top1)
      print(f"pretrain step {step}: validation top-1 {val_top1:.3f}", flush=True)
    if step % cfg.checkpoint_every_steps == 0 or step == cfg.steps:
      manager.save(checkpoint_number=step)
  if val_top1 is None:  # resumed at the last step
    val_top1 = _accuracy(model, val_x, val_y)
  train_writer.flush()
  eval_writer.flush()

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
      "stride_in_1x1": bool(getattr(backbone, "stride_in_1x1", False)),
  }
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(meta_path + ".tmp", meta_path)
  print(
      f"wrote {os.path.join(model_dir, BACKBONE_PREFIX)} (validation top-1 {val_top1:.3f}, "
      f"{meta['images_seen']} images seen)",
      flush=True)
  return meta
