"""The training loop: checkpoints, resume, summaries, progress and periodic COCO evaluation.

The loop is separate from the model and from the strategy: the entry point creates the
strategy, the model is built inside `strategy.scope()`, the step is written for one replica,
and pycocotools runs on the host.
"""

import json
import os
import re
import signal
import threading
import time
from typing import Dict, Optional

import gin
import tensorflow as tf
import tf_keras
from absl import logging

from rethink_tf import run_config
from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.evaluation import visualize
from rethink_tf.evaluation.evaluator import run_evaluation
from rethink_tf.modeling import init as init_lib
from rethink_tf.modeling import warm_start as warm_start_lib
from rethink_tf.modeling.build import build_model
from rethink_tf.training import distribute, divergence, run_files
from rethink_tf.training import optimizer as opt_lib
from rethink_tf.training.losses import loss_names, mask_rcnn_losses
from rethink_tf.training.schedules import nx_schedule

EVAL_METRICS_FILE = "eval_metrics.jsonl"
SCHEDULE_FILE = "schedule.json"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
CONFIG_CHANGES_FILE = "config_changes.txt"
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@gin.configurable
class TrainConfig:
  """Loop settings. `global_batch_size` is the one source of the batch: the schedule and the
  per-replica pipelines derive from it."""

  def __init__(self, global_batch_size: int = 16, eval_every_steps: int = 0,
               checkpoint_every_steps: int = 5000, keep_checkpoints: int = 5,
               log_every_steps: int = 20, steps_per_loop: int = 1, seed: Optional[int] = 0,
               jit_compile: bool = False, eval_batch_size: int = 8,
               stop_at_step: Optional[int] = None, precision: str = "float32",
               eval_image_summaries: int = 4, skip_nonfinite_steps: int = 0,
               cascade_start_step: int = 0, warm_start_checkpoint: Optional[str] = None,
               warm_start_keeps_step: bool = True):
    self.global_batch_size = global_batch_size
    self.eval_every_steps = eval_every_steps
    self.checkpoint_every_steps = checkpoint_every_steps
    self.keep_checkpoints = keep_checkpoints
    self.log_every_steps = log_every_steps
    self.steps_per_loop = steps_per_loop
    self.seed = seed
    self.jit_compile = jit_compile
    self.eval_batch_size = eval_batch_size
    self.stop_at_step = stop_at_step  # end early (e.g. a time-boxed slice of a long run)
    # Validation images drawn with their detections at every evaluation (0: none).
    self.eval_image_summaries = eval_image_summaries
    # Steps with a non-finite loss or gradient are never applied; the run stops at the first
    # one, or once more than this many were skipped (counted over the whole run).
    self.skip_nonfinite_steps = skip_nonfinite_steps
    # Cascade R-CNN models: stages 2.. train (and take part in inference) from this step on;
    # before it the model trains and evaluates as its stage 1 (the paper's X152 recipe adds
    # cascade for the last 270k iterations). A model without cascade stages refuses it.
    self.cascade_start_step = cascade_start_step
    # A new run (no checkpoint in model_dir yet) starts from another run's checkpoint: the
    # variables that fit are restored, the others keep their init (modeling/warm_start.py);
    # with warm_start_keeps_step the schedule continues at that checkpoint's step (e.g. a
    # plain run's step 135k continued as Cascade R-CNN).
    self.warm_start_checkpoint = warm_start_checkpoint
    self.warm_start_keeps_step = warm_start_keeps_step
    if precision not in PRECISIONS:
      raise ValueError(f"TrainConfig.precision {precision!r} is not one of {PRECISIONS}")
    # mixed_*: convs and fcs compute in bfloat16/float16 with float32 variables; GN/BN
    # statistics, RoIAlign sampling, the final logits and the losses stay float32;
    # mixed_float16 adds dynamic loss scaling.
    self.precision = precision


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""


def format_metrics(metrics: Dict[str, Dict[str, float]]) -> str:
  """'box AP 0.601 (AP50 0.850) | mask AP 0.567 (AP50 0.840)'; masks and keypoints only when
  evaluated."""
  names = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
  return " | ".join(f"{names[k]} AP {v['AP']:.3f} (AP50 {v['AP50']:.3f})"
                    for k, v in metrics.items())


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _init_choice():
  """(init mode, backbone checkpoint, its converter's pixel convention or None) from gin."""
  mode, checkpoint = init_lib.init_config()
  pretrained = mode is init_lib.InitMode.PRETRAINED
  return mode, checkpoint, init_lib.input_convention(checkpoint) if pretrained else None


def apply_input_convention(cfg: InputConfig) -> InputConfig:
  """Pretrained weights see the pixels they were trained on (channel order, mean, std)."""
  _, checkpoint, convention = _init_choice()
  if convention:
    cfg.channel_order = convention["channel_order"]
    cfg.pixel_mean = tuple(convention["pixel_mean"])
    cfg.pixel_std = tuple(convention["pixel_std"])
    print(f"input convention of {checkpoint}: {convention['channel_order']}, mean "
          f"{convention['pixel_mean']}, std {convention['pixel_std']}", flush=True)
  return cfg


def build_for_training(cfg: InputConfig):
  """Builds the gin-configured model and validates the init mode before any training starts."""
  mode, checkpoint, convention = _init_choice()
  model = build_model(num_classes=cfg.num_classes, image_size=cfg.padded_size)
  num_keypoints = model.keypoint_head.num_keypoints if model.keypoint_head is not None else 0
  if num_keypoints != len(cfg.keypoint_names):
    raise run_config.ConfigError(
        f"build_model.num_keypoints = {num_keypoints} but InputConfig.keypoint_names names "
        f"{len(cfg.keypoint_names)} keypoints: bind both (the head's outputs are the data's "
        "keypoints)")
  if model.box_plus_one:
    raise run_config.ConfigError(
        "build_model.box_plus_one (Detectron's \"+1\" box widths) is for converted Detectron "
        "models at inference: training encodes continuous boxes; leave it False to train")
  init_lib.validate(mode, model.backbone.norm, model.backbone.freeze_at, checkpoint)
  if convention and convention.get("stride_in_1x1", False) != model.backbone.stride_in_1x1:
    raise init_lib.InitError(
        f"{checkpoint} was converted with stride_in_1x1={convention['stride_in_1x1']} but the "
        f"model binds build_model.stride_in_1x1 = {model.backbone.stride_in_1x1}")
  return model, mode, checkpoint


def _abbreviate(names, limit: int = 4) -> str:
  """Groups names by their first two path components: '[a/b (3), c/d (1)]'."""
  groups = {}
  for n in names:
    key = "/".join(n.split(" ")[0].split("/")[:2])
    groups[key] = groups.get(key, 0) + 1
  items = [f"{k} ({v})" for k, v in groups.items()]
  return "[" + ", ".join(items[:limit]) + (", ..." if len(items) > limit else "") + "]"


def _dummy_build(model, cfg: InputConfig):
  """Creates every variable by running inference once on zeros."""
  images = tf.zeros([1, *cfg.padded_size, 3])
  model.detect(images, tf.constant([cfg.padded_size], tf.float32))


class Trainer:
  """Runs training for the schedule bound in gin; resumes automatically from `model_dir`."""

  def __init__(self, model_dir: str, strategy: tf.distribute.Strategy,
               config: Optional[TrainConfig] = None, input_config: Optional[InputConfig] = None,
               allow_config_change: bool = False):
    self.model_dir = model_dir
    self.allow_config_change = allow_config_change
    self.strategy = strategy
    self.cfg = config or TrainConfig()
    self.input_cfg = apply_input_convention((input_config or InputConfig()).prepare())
    replicas = strategy.num_replicas_in_sync
    if self.cfg.global_batch_size % replicas:
      raise ValueError(f"global batch {self.cfg.global_batch_size} is not divisible by "
                       f"{replicas} replicas")
    self.schedule = nx_schedule(global_batch_size=self.cfg.global_batch_size)
    if self.cfg.seed is not None:  # initialization (RoI sampling uses per-example seeds)
      tf_keras.utils.set_random_seed(self.cfg.seed)
    previous_policy = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(self.cfg.precision)  # layers keep it
    try:
      with strategy.scope():
        self.model, self.init_mode, self.init_checkpoint = build_for_training(self.input_cfg)
        _dummy_build(self.model, self.input_cfg)
        self.optimizer = opt_lib.make_optimizer(self.schedule)
        if self.cfg.precision == "mixed_float16":
          self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(self.optimizer)
        self.optimizer.build(self.model.trainable_variables)
        self.skipped_steps = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="skipped_nonfinite_steps",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    finally:
      tf_keras.mixed_precision.set_global_policy(previous_policy)
    # Weight decay of Cascade R-CNN's later stages waits for them to start training (their
    # gradients are zero before; decay alone would shrink their initialization).
    later = {id(v) for layer in getattr(self.model, "cascade_box_heads", [])
             + getattr(self.model, "cascade_box_predictors", []) for v in layer.variables}
    if self.cfg.cascade_start_step and self.model.num_stages == 1:
      raise run_config.ConfigError(
          f"TrainConfig.cascade_start_step = {self.cfg.cascade_start_step} but the model has "
          "no cascade stages: bind build_model.cascade_ious = (0.5, 0.6, 0.7)")
    self.decay_vars = [v for v in opt_lib.decayed_variables(self.model) if id(v) not in later]
    self.cascade_decay_vars = [v for v in opt_lib.decayed_variables(self.model)
                               if id(v) in later]
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                          skipped_nonfinite_steps=self.skipped_steps)
    # Every worker of a multi-worker job takes part in a save; only the chief's lands in
    # model_dir, the others write to a scratch directory they delete afterwards.
    self.is_chief, task_type, task_id = distribute.worker_info(strategy)
    self.checkpoint_dir = (model_dir if self.is_chief
                           else os.path.join(model_dir, f".{task_type}_{task_id}_scratch"))
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir,
                                              max_to_keep=self.cfg.keep_checkpoints)
    self.preempted = False
    self._sigterm = threading.Event()

  # ----------------------------------------------------------------------------------------
  def restore_or_initialize(self) -> int:
    """Resumes from the latest checkpoint in model_dir, else applies the init mode."""
    latest = tf.train.latest_checkpoint(self.model_dir)
    if latest:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
      step = int(self.optimizer.iterations.numpy())
      logging.info("resumed from %s at step %d", latest, step)
      print(f"resumed from {latest} at step {step}", flush=True)
      return step
    if self.cfg.warm_start_checkpoint:
      return self._warm_start(self.cfg.warm_start_checkpoint)
    if self.init_mode is init_lib.InitMode.PRETRAINED:
      init_lib.restore_pretrained(self.model, self.init_checkpoint)
      print(f"initialized the backbone from {self.init_checkpoint}", flush=True)
    else:
      print("training from scratch (random initialization)", flush=True)
    return 0

  def _warm_start(self, checkpoint: str) -> int:
    report = warm_start_lib.warm_start(self.model, run_files.resolve_checkpoint(checkpoint))
    step = report["step"] if self.cfg.warm_start_keeps_step else 0
    self.optimizer.iterations.assign(step)
    print(f"warm start from {checkpoint}: restored {len(report['restored'])} variables; "
          f"kept initialized: {len(report['new'])} new "
          f"{_abbreviate(report['new'])} and {len(report['shape_mismatch'])} of another "
          f"shape {_abbreviate(report['shape_mismatch'])}; starting at step {step}",
          flush=True)
    return step

  def _dataset(self, start_step: int = 0):
    """The training stream from `start_step` on: examples already trained on are skipped."""
    per_replica = self.cfg.global_batch_size // self.strategy.num_replicas_in_sync
    anchor_kwargs = self.model.anchor_kwargs
    start_index = start_step * self.cfg.global_batch_size

    def dataset_fn(ctx):
      return make_dataset(self.input_cfg, True, per_replica, anchor_kwargs, seed=self.cfg.seed,
                          input_context=ctx, start_index=start_index)

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def make_replica_step(self):
    """The per-replica step: batch -> (this replica's share of every loss (they sum to the
    global-batch losses), bool: the gradients were applied). A step whose loss or gradients
    are not finite on any replica is not applied (`divergence`). Runs under `strategy.run`;
    `_make_train_fn` wraps it in the compiled loop."""
    model, optimizer = self.model, self.optimizer
    decay_vars, cascade_decay_vars = self.decay_vars, self.cascade_decay_vars
    replicas = self.strategy.num_replicas_in_sync
    loss_scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def global_sum(x):
      return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, x)

    def grad_fn(batch):
      # Each replica's loss is its share of the global-batch loss (normalizers are global
      # counts); weight decay is split evenly. Gradients are summed over replicas.
      with tf.GradientTape() as tape:
        losses = mask_rcnn_losses(model(batch, training=True), batch,
                                  global_sum if replicas > 1 else None)
        decay = opt_lib.weight_decay_loss(decay_vars)
        if cascade_decay_vars:
          decay += (opt_lib.weight_decay_loss(cascade_decay_vars)
                    * tf.cast(model.cascade_active, tf.float32))
        losses["weight_decay_loss"] = decay / replicas
        loss = losses["total_loss"] + losses["weight_decay_loss"]
        if loss_scaled:
          loss = optimizer.get_scaled_loss(loss)
      grads = tape.gradient(loss, model.trainable_variables)
      if loss_scaled:
        grads = optimizer.get_unscaled_gradients(grads)
      return grads, losses

    if self.cfg.jit_compile:
      grad_fn = tf.function(grad_fn, jit_compile=True)

    def replica_step(batch):
      grads, losses = grad_fn(batch)
      # Under mixed_float16 the loss-scale optimizer skips non-finite gradients itself (and
      # lowers the scale): only the loss is checked here.
      finite = divergence.all_finite(losses["total_loss"] + losses["weight_decay_loss"],
                                     [] if loss_scaled else grads)
      if replicas > 1:
        finite = tf.equal(global_sum(1.0 - tf.cast(finite, tf.float32)), 0.0)
      applied = divergence.apply_gradients_if(optimizer, zip(grads, model.trainable_variables),
                                              finite, self.skipped_steps)
      return losses, applied

    return replica_step

  def _make_train_fn(self):
    strategy = self.strategy
    replica_step = self.make_replica_step()
    loss_keys = loss_names(self.model.mask_head is not None,
                           self.model.keypoint_head is not None,
                           self.model.num_stages) + ["weight_decay_loss"]

    @tf.function
    def train_loop(iterator, num_steps):
      """Runs up to num_steps steps, ending early after a step that was not applied.
      Returns (that last step's losses, steps run, bool: its update was applied)."""
      losses = {k: tf.constant(0.0) for k in loss_keys}
      done, applied = tf.constant(0), tf.constant(True)
      for _ in tf.range(num_steps):
        if not applied:
          break
        per_replica, per_replica_applied = strategy.run(replica_step, args=(next(iterator),))
        losses = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                  for k, v in per_replica.items()}
        applied = tf.equal(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                           tf.cast(per_replica_applied, tf.int32), axis=None),
                           strategy.num_replicas_in_sync)
        done += 1
      return losses, done, applied

    return train_loop

  # ----------------------------------------------------------------------------------------
  def evaluate(self, step: int, writer) -> Dict[str, Dict[str, float]]:
    metrics = run_evaluation(self.model, self.input_cfg, self.cfg.eval_batch_size)
    with writer.as_default(step=step):
      for iou_type, stats in metrics.items():
        for k, v in stats.items():
          tf.summary.scalar(f"{iou_type}/{k}", v)
      if self.cfg.eval_image_summaries:
        pictures = visualize.prediction_images(self.model, self.input_cfg,
                                               self.cfg.eval_image_summaries)
        tf.summary.image("predictions", pictures, max_outputs=len(pictures))
    writer.flush()
    run_files.append_line(os.path.join(self.model_dir, EVAL_METRICS_FILE),
                          json.dumps({"step": step, **metrics}))
    print(f"eval @ step {step}: {format_metrics(metrics)}", flush=True)
    return metrics

  def train(self) -> Optional[Dict[str, Dict[str, float]]]:
    """Trains to the end of the schedule (or `stop_at_step`); returns the last eval metrics.

    On SIGTERM (preemption) the run saves a checkpoint at the current step after the running
    loop call and returns with `self.preempted` set; starting the same command again resumes
    there, on the examples an uninterrupted run would have seen next.
    """
    tf.io.gfile.makedirs(self.model_dir)
    self._check_run_config()
    if self.is_chief:
      run_files.write_text(os.path.join(self.model_dir, "config.gin"), gin.config_str())
      self._write_schedule()
    step = self.restore_or_initialize()
    total = self.schedule.total_steps
    end = min(total, self.cfg.stop_at_step or total)
    if self.is_chief:
      train_writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
      eval_writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))
    else:
      train_writer = eval_writer = tf.summary.create_noop_writer()
    print(f"schedule: {total} steps at global batch {self.cfg.global_batch_size}, "
          f"LR {self.schedule.base_lr:g} decayed x{self.schedule.decay_factor:g} at "
          f"{list(self.schedule.boundaries)}, warmup {self.schedule.warmup_steps} steps; "
          f"{self.strategy.num_replicas_in_sync} replica(s)", flush=True)
    if step >= end:
      print(f"nothing to do: checkpoint is at step {step}, the run ends at {end}")
      return None
    self._set_cascade(step)
    iterator = iter(self._dataset(start_step=step))
    train_loop = self._make_train_fn()
    metrics = None
    t_window, steps_window = time.time(), 0
    t_start, step_start = time.time(), step
    previous_handler = self._catch_sigterm()
    try:
      while step < end:
        n = min(self.cfg.steps_per_loop, end - step, self._steps_to_next_event(step, end))
        losses, done, applied = train_loop(iterator, tf.constant(n))
        if step == step_start and self.is_chief:
          run_files.write_text(os.path.join(self.model_dir, OPERATIVE_CONFIG_FILE),
                               gin.operative_config_str())
        done = int(done)
        step += done
        steps_window += done
        self._set_cascade(step)
        if not bool(applied):
          self._skip_or_stop(step, losses, train_writer)
        elif step % self.cfg.log_every_steps == 0 or step == end or step - done == step_start:
          self._log(step, end, done, step_start, t_start, t_window, steps_window, losses,
                    train_writer)
          t_window, steps_window = time.time(), 0
        if self._preemption_requested():
          self._save(step)
          self.preempted = True
          saved = self.manager.latest_checkpoint if self.is_chief else "the chief's checkpoint"
          print(f"preempted (SIGTERM) at step {step}: saved {saved}; run the same command "
                "again to resume", flush=True)
          return None
        if step % self.cfg.checkpoint_every_steps == 0 or step == end:
          self._save(step)
        if self.is_chief and ((self.cfg.eval_every_steps and
                               step % self.cfg.eval_every_steps == 0) or step == total):
          metrics = self.evaluate(step, eval_writer)
    finally:
      if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)
      train_writer.flush()
    if self.is_chief:
      run_files.write_text(os.path.join(self.model_dir, OPERATIVE_CONFIG_FILE),
                           gin.operative_config_str())
    return metrics

  def _check_run_config(self):
    """Refuses (ConfigError) to continue a run in model_dir that was trained with another
    operative config, unless allow_config_change; allowed changes are printed and appended
    to `config_changes.txt`. Runs before any training step."""
    path = os.path.join(self.model_dir, OPERATIVE_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
      return
    with tf.io.gfile.GFile(path) as f:
      previous = f.read()
    changes = run_config.check_run_config(previous, gin.operative_config_str(), self.model_dir,
                                          self.allow_config_change)
    if changes and self.is_chief:
      latest = tf.train.latest_checkpoint(self.model_dir)
      lines = [f"config changed when resuming from {latest} (--allow_config_change):"]
      lines += [f"  {k}: {a} -> {b}" for k, a, b in changes]
      print("\n".join(lines), flush=True)
      with open(os.path.join(self.model_dir, CONFIG_CHANGES_FILE), "a") as f:
        f.write("\n".join(lines) + "\n")

  def _write_schedule(self):
    """`model_dir/schedule.json`: the run's steps, LR decays and batch, for tools that plot it
    (the LR scalars are logged every `log_every_steps`, too coarse to place a decay)."""
    s = self.schedule
    run_files.write_text(os.path.join(self.model_dir, SCHEDULE_FILE), json.dumps(
        {"total_steps": s.total_steps, "boundaries": list(s.boundaries), "base_lr": s.base_lr,
         "warmup_steps": s.warmup_steps, "decay_factor": s.decay_factor,
         "global_batch_size": self.cfg.global_batch_size}))

  def _log(self, step, end, n, step_start, t_start, t_window, steps_window, losses, writer):
    values = {k: float(v) for k, v in losses.items()}
    sps = steps_window / max(time.time() - t_window, 1e-9)
    # The first window includes tracing and compilation; later ones measure the steps.
    rate = sps if step - n != step_start else (step - step_start) / max(
        time.time() - t_start, 1e-9)
    lr = self.schedule.lr_at(step)
    with writer.as_default(step=step):
      for k, v in values.items():
        tf.summary.scalar(f"losses/{k}", v)
      tf.summary.scalar("learning_rate", lr)
      tf.summary.scalar("steps_per_sec", sps)
      tf.summary.scalar("images_per_sec", sps * self.cfg.global_batch_size)
    mask = f" mask {values['mask_loss']:.3f}" if "mask_loss" in values else ""
    print(f"step {step}/{end} | loss {values['total_loss']:.4f} (rpn {values['rpn_cls_loss']:.3f}"
          f"/{values['rpn_box_loss']:.3f} cls {values['fast_rcnn_cls_loss']:.3f} box "
          f"{values['fast_rcnn_box_loss']:.3f}{mask}) | lr {lr:.5f} | "
          f"{sps:.2f} steps/s {sps * self.cfg.global_batch_size:.1f} img/s | "
          f"ETA {_format_eta((end - step) / max(rate, 1e-9))}", flush=True)

  def _skip_or_stop(self, step: int, losses, writer):
    """After a step that was not applied (non-finite loss or gradient): a warning while
    `skip_nonfinite_steps` allows, else a FloatingPointError naming the step, every loss term
    and the last good checkpoint (nothing is saved after the bad step)."""
    values = {k: float(v) for k, v in losses.items()}
    skipped = int(self.skipped_steps.numpy())
    message = divergence.nonfinite_message(step, values, skipped, self.cfg.skip_nonfinite_steps,
                                           tf.train.latest_checkpoint(self.model_dir))
    with writer.as_default(step=step):
      tf.summary.scalar("skipped_nonfinite_steps", skipped)
    if skipped > self.cfg.skip_nonfinite_steps:
      raise FloatingPointError(message)
    print(f"warning: {message}", flush=True)

  def _save(self, step: int):
    """Saves on every worker (a collective); a checkpoint becomes the latest only once it is
    completely written (TF writes the files, then the `checkpoint` state file), so a crash
    mid-write leaves the previous one restorable. A failed write (a full disk) removes the
    new checkpoint's partial files and raises CheckpointWriteError naming the intact one."""
    if self.manager.latest_checkpoint and self.manager.latest_checkpoint.endswith(f"-{step}"):
      return
    try:
      self.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
      raise self._failed_save(step, e) from e
    if not self.is_chief:
      tf.io.gfile.rmtree(self.checkpoint_dir)

  def _failed_save(self, step: int, error: Exception) -> "CheckpointWriteError":
    prefix = os.path.join(self.checkpoint_dir, f"ckpt-{step}")
    previous = tf.train.latest_checkpoint(self.checkpoint_dir)  # what the state file says
    removed = []
    if previous != prefix:
      for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
        try:
          (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
          removed.append(os.path.basename(path))
        except (tf.errors.OpError, OSError):
          pass
    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "",  # TF's op-location prefix
                    getattr(error, "message", None) or str(error))
    intact = (f"the previous checkpoint {previous} is intact: free space in "
              f"{self.checkpoint_dir} and run the same command to resume from it"
              if previous else "no earlier checkpoint exists: the run restarts from step 0")
    return CheckpointWriteError(
        f"could not write checkpoint {prefix} at step {step}: {reason.strip()}; "
        f"removed its partial files {removed}; {intact}")

  def _catch_sigterm(self):
    """Turns SIGTERM into a request to save and stop (main thread only); returns the old
    handler, or None when no handler was installed."""
    if threading.current_thread() is not threading.main_thread():
      return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: self._sigterm.set())

  def _preemption_requested(self) -> bool:
    """True once any worker got SIGTERM; multi-worker jobs agree on it (every worker calls
    this after every loop), so all of them save the same step and stop together."""
    local = self._sigterm.is_set()
    if not distribute.is_multi_worker(self.strategy):
      return local
    flag = tf.constant(1 if local else 0, tf.int32)
    value = self.strategy.experimental_distribute_values_from_function(lambda ctx: flag)
    return int(self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)) > 0

  def _set_cascade(self, step: int):
    """Turns Cascade R-CNN's later stages on once `step` reaches `cascade_start_step` (also
    right after a resume; the flag is checkpointed with the model)."""
    if self.model.num_stages == 1:
      return
    active = step >= self.cfg.cascade_start_step
    if bool(self.model.cascade_active.numpy()) != active:
      self.model.cascade_active.assign(active)
      state = "train from" if active else "wait for"
      print(f"cascade: stages 2-{self.model.num_stages} {state} step "
            f"{self.cfg.cascade_start_step} (now {step})", flush=True)

  def _steps_to_next_event(self, step: int, end: int) -> int:
    """Steps until the next log, checkpoint, evaluation or cascade start, so a loop call
    never skips one."""
    periods = [self.cfg.log_every_steps, self.cfg.checkpoint_every_steps]
    if self.cfg.eval_every_steps:
      periods.append(self.cfg.eval_every_steps)
    steps = min(p - step % p for p in periods if p)
    if self.model.num_stages > 1 and step < self.cfg.cascade_start_step:
      steps = min(steps, self.cfg.cascade_start_step - step)
    return max(1, steps)
