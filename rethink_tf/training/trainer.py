"""The training loop: restores a task, runs its compiled steps and calls the hooks between them.

The loop knows no model (detectron2 `TrainerBase.train`, Model Garden Orbit): a task
(`DetectionTask` in `task.py`, `ClassificationTask` in `pretraining.py`) builds its model inside
`strategy.scope()` and owns its step, data and checkpoint; hooks (`hooks.py`) hold everything
periodic or conditional. The task's `default_hooks()` are the usual list; any other list works.

A task provides:
  strategy, model, optimizer, checkpoint (tf.train.Checkpoint of the training state);
  total_steps, global_batch_size, loss_keys (the keys its steps return);
  steps_in_call: int variable, the steps the running compiled call has completed;
  restore_or_initialize(model_dir) -> the step training continues from;
  dataset(start_step) -> a distributed dataset from that step on;
  train_function() -> (iterator, num_steps) -> (losses of the last step, steps run, applied);
  learning_rate(step) -> float; describe() -> one line about the schedule.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf
from absl import logging

from rethink_tf.training import distribute
from rethink_tf.training import hooks as hooks_lib
from rethink_tf.training.hooks import CheckpointWriteError  # noqa: F401 (part of this API)


class Trainer:
  """Trains `task` from its latest checkpoint in `model_dir` to `total_steps` (or
  `stop_at_step`), `steps_per_loop` steps per compiled call at most.

  Attributes: task, model_dir, strategy, hooks (in call order), is_chief, start_step /
  end_step (of the current `train` call), preempted (True once a SIGTERM stopped the run),
  completed (True once the loop reached end_step), metrics (the last evaluation's, or None).
  """

  def __init__(self,
               task,
               hooks: Sequence[hooks_lib.Hook],
               model_dir: str,
               *,
               steps_per_loop: int = 1,
               stop_at_step: Optional[int] = None):
    self.task, self.model_dir = task, model_dir
    self.strategy = task.strategy
    self.steps_per_loop, self.stop_at_step = steps_per_loop, stop_at_step
    self.is_chief = distribute.worker_info(self.strategy)[0]
    self.hooks: List[hooks_lib.Hook] = list(hooks)
    for hook in self.hooks:
      hook.bind(self)
    self.start_step = self.end_step = 0
    self.preempted = self.completed = False
    self.metrics: Optional[Dict[str, Dict[str, float]]] = None
    self._writers: Dict[str, tf.summary.SummaryWriter] = {}

  @property
  def model(self):
    return self.task.model

  @property
  def optimizer(self):
    return self.task.optimizer

  @property
  def checkpointer(self) -> Optional["hooks_lib.Checkpointer"]:
    """The Checkpointer among the hooks (None without one)."""
    return next((h for h in self.hooks if isinstance(h, hooks_lib.Checkpointer)), None)

  def restore_or_initialize(self) -> int:
    """Resumes from the latest checkpoint in model_dir, else the task's initialization."""
    return self.task.restore_or_initialize(self.model_dir)

  def summary_writer(self, name: str):
    """The TensorBoard writer of `model_dir/name` (a no-op writer on non-chief workers)."""
    if name not in self._writers:
      self._writers[name] = (tf.summary.create_file_writer(os.path.join(self.model_dir, name))
                             if self.is_chief else tf.summary.create_noop_writer())
    return self._writers[name]

  def train(self) -> Optional[Dict[str, Dict[str, float]]]:
    """Trains to the end (or `stop_at_step`); returns the last evaluation's metrics.

    The checkpoint is restored before any hook runs. On SIGTERM (preemption) the run saves a
    checkpoint at the current step after the running loop call and returns None with
    `self.preempted` set; starting the same command again resumes there. An error of a step or
    of a hook goes to every hook's `on_error` in order; the first exception one returns is
    raised instead (e.g. a one-line error that names a damaged record).
    """
    tf.io.gfile.makedirs(self.model_dir)
    total = self.task.total_steps
    self.end_step = min(total, self.stop_at_step or total)
    self.preempted = self.completed = False
    self.metrics = None
    self.start_step = self.restore_or_initialize()
    try:
      for hook in self.hooks:
        hook.before_train()
      step = self.start_step
      if step >= self.end_step:
        logging.info(
            f"nothing to do: checkpoint is at step {step}, the run ends at {self.end_step}")
        return None
      iterator = iter(self.task.dataset(start_step=step))
      train_loop = self.task.train_function()
      while step < self.end_step:
        events = [h.steps_to_next(step) for h in self.hooks]
        n = min([self.steps_per_loop, self.end_step - step] +
                [max(1, e) for e in events if e is not None])
        try:
          losses, done, applied = train_loop(iterator, tf.constant(n))
        except Exception as e:  # pylint: disable=broad-except
          self._route_error(step + int(self.task.steps_in_call.numpy()), e)
          raise
        step += int(done)
        result = hooks_lib.StepResult(losses, int(done), bool(applied))
        try:
          for hook in self.hooks:
            hook.after_step(step, result)
            if self.preempted:
              return None
        except Exception as e:  # pylint: disable=broad-except
          self._route_error(step, e)
          raise
      self.completed = True
      return self.metrics
    finally:
      for hook in self.hooks:
        hook.after_train()
      for writer in self._writers.values():
        writer.flush()

  def _route_error(self, step: int, error: Exception):
    """Raises the first exception a hook's `on_error(step, error)` returns (`step`: the last
    completed step); returns when none does (the caller re-raises `error`)."""
    for hook in self.hooks:
      replacement = hook.on_error(step, error)
      if replacement is not None:
        raise replacement from None


def in_graph_loop(global_step: Callable, loss_keys: Sequence[str], steps_in_call: tf.Variable):
  """A task's `train_function` as one tf.function whose loop takes its batches from the
  iterator in the graph: (iterator, num_steps) -> (the last step's {loss_keys}, steps run,
  applied); it ends early after a step not applied. `global_step(batch) -> (losses, applied)`
  runs one step on every replica; `steps_in_call` counts the steps of the running call.

  No autograph: the loop is an explicit tf.while_loop, and the models have no
  tensor-dependent Python control flow, so nothing needs converting (converting a whole
  detector recursively made up most of its tracing time).
  """

  @tf.function(autograph=False)
  def train_loop(iterator, num_steps):
    losses: Dict[str, tf.Tensor] = {k: tf.constant(0.0) for k in loss_keys}

    def more(done, applied, losses):
      return tf.logical_and(done < num_steps, applied)

    def one_step(done, applied, losses):
      losses, applied = global_step(next(iterator))
      # Counted once the step's results exist (the body's outputs wait for its updates).
      with tf.control_dependencies([applied] + list(losses.values())):
        counted = steps_in_call.assign(done + 1)
      with tf.control_dependencies([counted]):
        return done + 1, tf.identity(applied), losses

    with tf.control_dependencies([steps_in_call.assign(0)]):
      start = tf.identity(0)
    done, applied, losses = tf.while_loop(more, one_step, (start, tf.constant(True), losses))
    return losses, done, applied

  return train_loop
