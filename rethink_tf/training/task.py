"""The detection task of one training run: its model, optimizer, data, replica step and the
hooks it runs with (`detection_trainer` puts them together).

Model Garden's `Task` and detectron2's `SimpleTrainer.run_step` split training the same way:
this module knows what one step computes (the model's losses, the weight-decay groups the model
declares, the non-finite guard); `trainer.py` decides when steps run and the hooks what happens
between them. Built inside `strategy.scope()`; the step is written for one replica.
"""

from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tf_keras
from absl import logging

from rethink_tf import run_files
from rethink_tf.checkpoint import init as init_lib
from rethink_tf.checkpoint import legacy_layout
from rethink_tf.checkpoint import warm_start as warm_start_lib
from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.detector import apply_input_convention, build_detector, init_choice
from rethink_tf.training import detection_hooks, distribute, divergence, input_damage, run_config
from rethink_tf.training import hooks as hooks_lib
from rethink_tf.training import optimizer as opt_lib
from rethink_tf.training.schedules import nx_schedule
from rethink_tf.training.train_config import TrainConfig
from rethink_tf.training.trainer import Trainer, in_graph_loop


class DetectionTask:
  """Builds the gin-bound detector, its optimizer and checkpoint under `strategy`.

  Attributes: model, optimizer, schedule, input_cfg (pixel convention applied, data prepared),
  skipped_steps (int64 variable, checkpointed), checkpoint (tf.train.Checkpoint of all three),
  init_mode / init_checkpoint (the gin init choice), loss_keys (what a step returns).
  """

  def __init__(self,
               strategy: tf.distribute.Strategy,
               config: TrainConfig,
               input_config: Optional[InputConfig] = None,
               allow_config_change: bool = False):
    self.strategy, self.cfg = strategy, config
    self.allow_config_change = allow_config_change
    self.input_cfg = apply_input_convention((input_config or InputConfig()).prepare())
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
      raise ValueError(f"global batch {config.global_batch_size} is not divisible by "
                       f"{replicas} replicas")
    self.schedule = nx_schedule(global_batch_size=config.global_batch_size)
    if config.seed is not None:  # initialization (RoI sampling uses per-example seeds)
      tf_keras.utils.set_random_seed(config.seed)
    self.init_mode, self.init_checkpoint, _ = init_choice()
    previous_policy = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(config.precision)  # layers keep it
    try:
      with strategy.scope():
        self.model = build_detector(self.input_cfg, training=True)
        self.optimizer = opt_lib.make_optimizer(self.schedule)
        if config.precision == "mixed_float16":
          self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(self.optimizer)
        self.optimizer.build(self.model.trainable_variables)
        self.skipped_steps = tf.Variable(0,
                                         dtype=tf.int64,
                                         trainable=False,
                                         name="skipped_nonfinite_steps",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    finally:
      tf_keras.mixed_precision.set_global_policy(previous_policy)
    # Weight decay in the groups the model declares is gated (a part that starts training
    # late keeps its initialization until then); the rest is decayed ungated.
    decayed = opt_lib.decayed_variables(self.model)
    grouped = self.model.decay_groups()
    in_group = {id(v) for vs, _ in grouped for v in vs}
    self.decay_vars = [v for v in decayed if id(v) not in in_group]
    self.gated_decay = [
        ([v for v in decayed if id(v) in {id(u) for u in vs}], gate) for vs, gate in grouped
    ]
    # Steps completed by the running compiled call (not checkpointed): after an input error
    # inside the call, the weights are those of step + this.
    self.steps_in_call = tf.Variable(0, trainable=False, name="steps_in_call")
    # Training shards to read instead of the pattern's (None: the pattern's).
    self.train_files: Optional[List[str]] = None
    self.checkpoint = tf.train.Checkpoint(model=self.model,
                                          optimizer=self.optimizer,
                                          skipped_nonfinite_steps=self.skipped_steps)
    self.loss_keys: List[str] = self.model.loss_names() + ["weight_decay_loss"]

  @property
  def total_steps(self) -> int:
    return self.schedule.total_steps

  @property
  def global_batch_size(self) -> int:
    return self.cfg.global_batch_size

  def learning_rate(self, step: int) -> float:
    return self.schedule.lr_at(step)

  def describe(self) -> str:
    s = self.schedule
    return (f"schedule: {s.total_steps} steps at global batch {self.cfg.global_batch_size}, "
            f"LR {s.base_lr:g} decayed x{s.decay_factor:g} at {list(s.boundaries)}, warmup "
            f"{s.warmup_steps} steps")

  def run_record(self) -> dict:
    """The schedule as `schedule.json` records it (LR scalars are too coarse to place a
    decay)."""
    s = self.schedule
    return {
        "total_steps": s.total_steps, "boundaries": list(s.boundaries), "base_lr": s.base_lr,
        "warmup_steps": s.warmup_steps, "decay_factor": s.decay_factor,
        "global_batch_size": self.cfg.global_batch_size
    }

  def default_hooks(self) -> List[hooks_lib.Hook]:
    """The detection run's hooks, in call order: the divergence guard precedes every save,
    the checkpoint precedes the model's step switches and the evaluation (a preempted run
    stops right after its save)."""
    cfg = self.cfg
    return [
        hooks_lib.RunRecord(),
        input_damage.SkipDamagedRecords(),
        input_damage.DamagedRecordStop(),
        hooks_lib.DivergenceGuard(cfg.skip_nonfinite_steps),
        hooks_lib.Progress(cfg.log_every_steps),
        hooks_lib.Checkpointer(cfg.checkpoint_every_steps, cfg.keep_checkpoints),
        hooks_lib.ModelSteps(),
        detection_hooks.Evaluation(cfg.eval_every_steps, cfg.eval_batch_size,
                                   cfg.eval_image_summaries)
    ]

  def restore_or_initialize(self, model_dir: str) -> int:
    """Resumes from the latest checkpoint in model_dir (once its operative config is checked
    against this one: `run_config.verify_resume`), else warm-starts or applies the init mode.
    Returns the step training continues from."""
    run_config.verify_resume(model_dir, self.allow_config_change,
                             distribute.worker_info(self.strategy)[0])
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
      tf.train.Checkpoint(model=legacy_layout.restore_root(self.model, latest),
                          optimizer=self.optimizer,
                          skipped_nonfinite_steps=self.skipped_steps).restore(
                              latest).assert_existing_objects_matched()
      step = int(self.optimizer.iterations.numpy())
      logging.info(f"resumed from {latest} at step {step}")
      return step
    if self.cfg.warm_start_checkpoint:
      return self._warm_start(self.cfg.warm_start_checkpoint)
    if self.init_mode is init_lib.InitMode.PRETRAINED:
      init_lib.restore_pretrained(self.model, self.init_checkpoint)
      logging.info(f"initialized the backbone from {self.init_checkpoint}")
    else:
      logging.info("training from scratch (random initialization)")
    return 0

  def _warm_start(self, checkpoint: str) -> int:
    report = warm_start_lib.warm_start(self.model, run_files.resolve_checkpoint(checkpoint))
    step = report["step"] if self.cfg.warm_start_keeps_step else 0
    self.optimizer.iterations.assign(step)
    logging.info(f"warm start from {checkpoint}: restored {len(report['restored'])} variables; "
                 f"kept initialized: {len(report['new'])} new "
                 f"{_abbreviate(report['new'])} and {len(report['shape_mismatch'])} of another "
                 f"shape {_abbreviate(report['shape_mismatch'])}; starting at step {step}")
    return step

  def dataset(self, start_step: int = 0) -> tf.distribute.DistributedDataset:
    """The training stream from `start_step` on: examples already trained on are skipped."""
    per_replica = self.cfg.global_batch_size // self.strategy.num_replicas_in_sync
    anchor_kwargs = self.model.anchor_kwargs
    start_index = start_step * self.cfg.global_batch_size

    def dataset_fn(ctx):
      return make_dataset(self.input_cfg,
                          True,
                          per_replica,
                          anchor_kwargs,
                          seed=self.cfg.seed,
                          input_context=ctx,
                          start_index=start_index,
                          files=self.train_files)

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def replica_step(self):
    """The per-replica step: batch -> (this replica's share of every loss (they sum to the
    global-batch losses), bool: the gradients were applied). A step whose loss or gradients
    are not finite on any replica is not applied (`divergence`). Runs under `strategy.run`;
    `train_function` wraps it in the compiled loop."""
    model, optimizer = self.model, self.optimizer
    decay_vars, gated_decay = self.decay_vars, self.gated_decay
    replicas = self.strategy.num_replicas_in_sync
    loss_scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def global_sum(x):
      return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, x)

    def grad_fn(batch):
      # Each replica's loss is its share of the global-batch loss (normalizers are global
      # counts); weight decay is split evenly. Gradients are summed over replicas.
      with tf.GradientTape() as tape:
        losses = model.compute_losses(model(batch, training=True), batch,
                                      global_sum if replicas > 1 else None)
        decay = opt_lib.weight_decay_loss(decay_vars)
        for variables, gate in gated_decay:
          if variables:
            decay += opt_lib.weight_decay_loss(variables) * gate()
        losses["weight_decay_loss"] = decay / replicas
        loss = losses["total_loss"] + losses["weight_decay_loss"]
        if loss_scaled:
          loss = optimizer.get_scaled_loss(loss)
      grads = tape.gradient(loss, model.trainable_variables)
      if loss_scaled:
        grads = optimizer.get_unscaled_gradients(grads)
      return grads, losses

    if self.cfg.jit_compile:
      grad_fn = tf.function(grad_fn, jit_compile=True, autograph=False)

    def step(batch):
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

    return step

  def train_function(self):
    """A function (iterator, num_steps) -> (the last step's global losses {loss_keys},
    steps run, bool: its update was applied); it ends early after a step not applied.

    One training canvas: one tf.function whose loop takes its batches from the iterator in
    the graph. Several (`InputConfig.canvas_list`): each batch is taken on the host and run by
    a tf.function traced once per canvas (its static shape: one program, one XLA
    compilation per canvas); `steps_in_call` counts the same way.
    """
    if len(self.input_cfg.canvas_list()) > 1:
      return self._per_canvas_train_function()
    return in_graph_loop(self._global_step(), self.loss_keys, self.steps_in_call)

  def _global_step(self):
    """batch (per replica) -> (the step's global losses, bool: every replica applied it)."""
    strategy, replica_step = self.strategy, self.replica_step()

    def global_step(batch):
      per_replica, per_replica_applied = strategy.run(replica_step, args=(batch,))
      losses = {
          k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
          for k, v in per_replica.items()
      }
      applied = tf.equal(
          strategy.reduce(tf.distribute.ReduceOp.SUM,
                          tf.cast(per_replica_applied, tf.int32),
                          axis=None), strategy.num_replicas_in_sync)
      return losses, applied

    return global_step

  def _per_canvas_train_function(self):
    # No autograph, as the in-graph loop: the model has no tensor-dependent Python control
    # flow. Traced per input shape, i.e. once per canvas.
    one_step = tf.function(self._global_step(), autograph=False)
    self.per_canvas_step = one_step  # its tracing count is one per canvas seen

    def train_loop(iterator, num_steps):
      self.steps_in_call.assign(0)
      done, applied = 0, True
      losses = {k: tf.constant(0.0) for k in self.loss_keys}
      while done < int(num_steps) and applied:
        losses, applied = one_step(next(iterator))
        applied = bool(applied)
        done += 1
        self.steps_in_call.assign(done)
      return losses, tf.constant(done), tf.constant(applied)

    return train_loop


def _abbreviate(names, limit: int = 4) -> str:
  """Groups names by their first two path components: '[a/b (3), c/d (1)]'."""
  groups: Dict[str, int] = {}
  for n in names:
    key = "/".join(n.split(" ")[0].split("/")[:2])
    groups[key] = groups.get(key, 0) + 1
  items = [f"{k} ({v})" for k, v in groups.items()]
  return "[" + ", ".join(items[:limit]) + (", ..." if len(items) > limit else "") + "]"


def detection_trainer(
    model_dir: str,
    strategy: tf.distribute.Strategy,
    config: Optional[TrainConfig] = None,
    input_config: Optional[InputConfig] = None,
    allow_config_change: bool = False,
    extra_hooks: Sequence[hooks_lib.Hook] = ()) -> Trainer:
  """The gin-bound detection run in `model_dir`: its task with the default hooks (then
  `extra_hooks`) on the generic loop."""
  cfg = config or TrainConfig()
  task = DetectionTask(strategy, cfg, input_config, allow_config_change)
  return Trainer(task,
                 task.default_hooks() + list(extra_hooks),
                 model_dir,
                 steps_per_loop=cfg.steps_per_loop,
                 stop_at_step=cfg.stop_at_step)
