"""The training loop: iterates the task's compiled steps and calls the hooks between them.

The loop is separate from the model and from the strategy (detectron2 `TrainerBase.train`,
Model Garden Orbit): the entry point creates the strategy, `task.py` builds the model inside
`strategy.scope()` and owns the replica step, `hooks.py` holds everything periodic or
conditional (checkpoints and preemption, evaluation, progress and summaries, the cascade
start, the run-config guard, divergence), `input_damage.py` what an unreadable record does, and
pycocotools runs on the host.
"""

import os
from typing import Dict, List, Optional

import tensorflow as tf

from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.training import distribute, input_damage
from rethink_tf.training import hooks as hooks_lib
from rethink_tf.training.hooks import CheckpointWriteError  # noqa: F401 (part of this API)
from rethink_tf.training.task import DetectionTask
from rethink_tf.training.train_config import TrainConfig


class Trainer:
  """Runs training for the schedule bound in gin; resumes automatically from `model_dir`.

  Attributes: task (DetectionTask: model, optimizer, data, step), model, optimizer,
  input_cfg, schedule (the task's), cfg (TrainConfig), hooks (in call order), checkpointer
  (the Checkpointer hook), is_chief, start_step / end_step (of the current `train` call),
  preempted (True once a SIGTERM stopped the run), completed (True once the loop reached
  end_step), metrics (the last evaluation's, or None).
  """

  def __init__(self,
               model_dir: str,
               strategy: tf.distribute.Strategy,
               config: Optional[TrainConfig] = None,
               input_config: Optional[InputConfig] = None,
               allow_config_change: bool = False,
               extra_hooks: Optional[List[hooks_lib.Hook]] = None):
    self.model_dir, self.strategy = model_dir, strategy
    self.cfg = cfg = config or TrainConfig()
    self.task = DetectionTask(strategy, cfg, input_config)
    self.model, self.optimizer = self.task.model, self.task.optimizer
    self.input_cfg, self.schedule = self.task.input_cfg, self.task.schedule
    self.is_chief = distribute.worker_info(strategy)[0]
    self.checkpointer = hooks_lib.Checkpointer(self, cfg.checkpoint_every_steps,
                                               cfg.keep_checkpoints)
    # Called in this order; the divergence guard precedes every save, the checkpoint precedes
    # the cascade switch and the evaluation (a preempted run stops right after its save).
    self.hooks = [
        hooks_lib.RunConfigGuard(allow_config_change),
        input_damage.SkipDamagedRecords(),
        hooks_lib.DivergenceGuard(cfg.skip_nonfinite_steps),
        hooks_lib.Progress(cfg.log_every_steps), self.checkpointer,
        hooks_lib.CascadeStart(self.model, cfg.cascade_start_step),
        hooks_lib.Evaluation(cfg.eval_every_steps, cfg.eval_batch_size, cfg.eval_image_summaries)
    ] + list(extra_hooks or [])
    for hook in self.hooks:
      hook.trainer = self
    self.start_step = self.end_step = 0
    self.preempted = self.completed = False
    self.metrics: Optional[Dict[str, Dict[str, float]]] = None
    self._writers = {}

  def restore_or_initialize(self) -> int:
    """Resumes from the latest checkpoint in model_dir, else applies the init mode."""
    return self.task.restore_or_initialize(self.model_dir)

  def summary_writer(self, name: str):
    """The TensorBoard writer of `model_dir/name` (a no-op writer on non-chief workers)."""
    if name not in self._writers:
      self._writers[name] = (tf.summary.create_file_writer(os.path.join(self.model_dir, name))
                             if self.is_chief else tf.summary.create_noop_writer())
    return self._writers[name]

  def train(self) -> Optional[Dict[str, Dict[str, float]]]:
    """Trains to the end of the schedule (or `stop_at_step`); returns the last eval metrics.

    On SIGTERM (preemption) the run saves a checkpoint at the current step after the running
    loop call and returns None with `self.preempted` set; starting the same command again
    resumes there, on the examples an uninterrupted run would have seen next.
    """
    tf.io.gfile.makedirs(self.model_dir)
    total = self.schedule.total_steps
    self.end_step = min(total, self.cfg.stop_at_step or total)
    self.preempted = self.completed = False
    self.metrics = None
    try:
      for hook in self.hooks:
        hook.before_train()
      step = self.start_step
      if step >= self.end_step:
        print(f"nothing to do: checkpoint is at step {step}, the run ends at {self.end_step}")
        return None
      iterator = iter(self.task.dataset(start_step=step))
      train_loop = self.task.train_function()
      while step < self.end_step:
        events = [h.steps_to_next(step) for h in self.hooks]
        n = min([self.cfg.steps_per_loop, self.end_step - step] +
                [max(1, e) for e in events if e is not None])
        try:
          losses, done, applied = train_loop(iterator, tf.constant(n))
        except tf.errors.DataLossError as e:  # an unreadable record (input_damage.py)
          raise input_damage.stop(self, step + int(self.task.steps_in_call.numpy()), e) from None
        step += int(done)
        result = hooks_lib.StepResult(losses, int(done), bool(applied))
        try:
          for hook in self.hooks:
            hook.after_step(step, result)
            if self.preempted:
              return None
        except tf.errors.DataLossError as e:  # evaluation's records
          raise input_damage.stop(self, step, e) from None
      self.completed = True
      return self.metrics
    finally:
      for hook in self.hooks:
        hook.after_train()
      for writer in self._writers.values():
        writer.flush()
