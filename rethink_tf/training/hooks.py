"""What happens between training steps, one hook per concern (detectron2's `hooks.py`); the
hooks here serve any task (the detection task adds its own in `detection_hooks.py`).

The loop (`trainer.py`) restores the task, then calls, in the order the hooks were given:
`before_train()` once, `after_step(step, result)` after every call of the compiled loop (`step`
is the step reached, `result` its `StepResult`), and `after_train()` once at the end, also when
training stops with an error. `steps_to_next(step)` bounds the steps of the next loop call, so a
compiled call of several steps never runs past a hook's event. `on_error(step, error)` sees an
error of a step or a hook (`step`: the last completed one) and may return the exception to raise
instead. Every worker of a multi-worker job runs every hook (checkpoint saves and the preemption
vote are collectives); what lands on disk is the chief's.
"""

import collections
import json
import os
import re
import signal
import threading
import time
from typing import Any, Dict, Optional

import gin
import tensorflow as tf
from absl import logging

from rethink_tf import run_files
from rethink_tf.training import distribute, divergence
from rethink_tf.training.run_config import OPERATIVE_CONFIG_FILE

SCHEDULE_FILE = "schedule.json"

# losses: {name: scalar tensor} of the call's last step; done: steps the call ran; applied:
# whether that last step's update was applied (False: a non-finite loss or gradient).
StepResult = collections.namedtuple("StepResult", ["losses", "done", "applied"])


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""


class Hook:
  """Base class: every method does nothing. `trainer` is set by the Trainer (`bind`)."""

  trainer: Any = None  # the Trainer (trainer.py imports this module)

  def bind(self, trainer):
    """Called once by the Trainer that runs this hook."""
    self.trainer = trainer

  def on_error(self, step: int, error: Exception) -> Optional[Exception]:
    """The exception to raise instead of `error` (raised by the step after `step`, or by a
    hook after it), or None."""
    return None

  def before_train(self):
    pass

  def after_step(self, step: int, result: StepResult):
    pass

  def after_train(self):
    pass

  def steps_to_next(self, step: int) -> Optional[int]:
    """Steps from `step` to this hook's next event, or None when it has none."""
    return None


def steps_until(step: int, period: int) -> Optional[int]:
  """Steps from `step` to the next multiple of `period` (None: period 0, no event)."""
  return period - step % period if period else None


class RunRecord(Hook):
  """Writes the run's `config.gin`, `schedule.json` (the task's `run_record()`, for tools that
  plot it) and, once the model is traced, `operative_config.gin` (which a resumed run is
  compared with: `run_config.py`)."""

  def before_train(self):
    t = self.trainer
    if t.is_chief:
      run_files.write_text(os.path.join(t.model_dir, "config.gin"), gin.config_str())
      record = t.task.run_record()
      if record is not None:
        run_files.write_text(os.path.join(t.model_dir, SCHEDULE_FILE), json.dumps(record))
    self._written = False

  def after_step(self, step, result):
    if not self._written:  # the first call traced the model: every binding was read
      self._write_operative_config()
      self._written = True

  def after_train(self):
    if self.trainer.completed:
      self._write_operative_config()

  def _write_operative_config(self):
    if self.trainer.is_chief:
      run_files.write_text(os.path.join(self.trainer.model_dir, OPERATIVE_CONFIG_FILE),
                           gin.operative_config_str())


class Checkpointer(Hook):
  """Saves the task's checkpoint every `every_steps` and at the end, and turns SIGTERM
  (preemption) into a save at the current step followed by a clean stop.

  Every worker takes part in a save (a collective); only the chief's lands in model_dir, the
  others write to a scratch directory they delete afterwards. A checkpoint becomes the latest
  only once it is completely written (TF writes the files, then the `checkpoint` state file),
  so a crash mid-write leaves the previous one restorable; a failed write (a full disk)
  removes the new checkpoint's partial files and raises CheckpointWriteError.
  """

  def __init__(self, every_steps: int, keep: int):
    self.every_steps, self.keep = every_steps, keep
    self._sigterm = threading.Event()
    self._previous_handler = None

  def bind(self, trainer):
    super().bind(trainer)
    _, task_type, task_id = distribute.worker_info(trainer.strategy)
    self.directory = (trainer.model_dir if trainer.is_chief else os.path.join(
        trainer.model_dir, f".{task_type}_{task_id}_scratch"))
    self.manager = tf.train.CheckpointManager(trainer.task.checkpoint,
                                              self.directory,
                                              max_to_keep=self.keep)

  def before_train(self):
    # Main thread only: signal handlers cannot be installed elsewhere.
    if threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM,
                                             lambda signum, frame: self._sigterm.set())

  def steps_to_next(self, step):
    return steps_until(step, self.every_steps)

  def after_step(self, step, result):
    t = self.trainer
    if self._preemption_requested():
      self.save(step)
      t.preempted = True
      saved = self.manager.latest_checkpoint if t.is_chief else "the chief's checkpoint"
      logging.info(f"preempted (SIGTERM) at step {step}: saved {saved}; run the same command "
                   "again to resume")
    elif step % self.every_steps == 0 or step == t.end_step:
      self.save(step)

  def after_train(self):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def save(self, step: int):
    if self.manager.latest_checkpoint and self.manager.latest_checkpoint.endswith(f"-{step}"):
      return
    try:
      self.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
      raise self._failed_save(step, e) from e
    if not self.trainer.is_chief:
      tf.io.gfile.rmtree(self.directory)

  def _failed_save(self, step: int, error: Exception) -> CheckpointWriteError:
    prefix = os.path.join(self.directory, f"ckpt-{step}")
    previous = tf.train.latest_checkpoint(self.directory)  # what the state file says
    removed = []
    if previous != prefix:
      for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
        try:
          (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
          removed.append(os.path.basename(path))
        except (tf.errors.OpError, OSError):
          pass
    reason = re.sub(
        r"\{\{function_node [^}]*\}\}\s*",
        "",  # TF's op-location prefix
        getattr(error, "message", None) or str(error))
    intact = (f"the previous checkpoint {previous} is intact: free space in "
              f"{self.directory} and run the same command to resume from it"
              if previous else "no earlier checkpoint exists: the run restarts from step 0")
    return CheckpointWriteError(
        f"could not write checkpoint {prefix} at step {step}: {reason.strip()}; "
        f"removed its partial files {removed}; {intact}")

  def _preemption_requested(self) -> bool:
    """True once any worker got SIGTERM; multi-worker jobs agree on it (every worker calls
    this after every loop call), so all of them save the same step and stop together."""
    local = self._sigterm.is_set()
    strategy = self.trainer.strategy
    if not distribute.is_multi_worker(strategy):
      return local
    flag = tf.constant(1 if local else 0, tf.int32)
    value = strategy.experimental_distribute_values_from_function(lambda ctx: flag)
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)) > 0


class ModelSteps(Hook):
  """Tells the model the training step, so what its parts switch on at a step (a stage that
  starts late, say) happens there, also right after a resume (their state is checkpointed with
  the model). The model's `set_step(step)` returns a line to print when something changed and
  `steps_to_next_change(step)` bounds the loop calls; a model without them is left alone."""

  def _model(self):
    model = self.trainer.model
    return model if hasattr(model, "set_step") else None

  def before_train(self):
    self._set(self.trainer.start_step)

  def steps_to_next(self, step):
    model = self._model()
    return model.steps_to_next_change(step) if model is not None else None

  def after_step(self, step, result):
    self._set(step)

  def _set(self, step: int):
    model = self._model()
    change = model.set_step(step) if model is not None else None
    if change:
      logging.info(change)


class DivergenceGuard(Hook):
  """After a step that was not applied (non-finite loss or gradient): a warning while
  `allowed` skipped steps allow, else a FloatingPointError naming the step, every loss term
  and the last good checkpoint (nothing is saved after the bad step)."""

  def __init__(self, allowed: int, advice: Optional[str] = None):
    self.allowed, self.advice = allowed, advice

  def after_step(self, step, result):
    if bool(result.applied):
      return
    t = self.trainer
    values = {k: float(v) for k, v in result.losses.items()}
    skipped = int(t.task.skipped_steps.numpy())
    kwargs = {"advice": self.advice} if self.advice else {}
    message = divergence.nonfinite_message(step, values, skipped, self.allowed,
                                           tf.train.latest_checkpoint(t.model_dir), **kwargs)
    with t.summary_writer("train").as_default(step=step):
      tf.summary.scalar("skipped_nonfinite_steps", skipped)
    if skipped > self.allowed:
      raise FloatingPointError(message)
    logging.warning(f"warning: {message}")


class Progress(Hook):
  """Prints the task's schedule, then every `every_steps` (and at the first and last step) the
  losses it is given, LR, steps/s, images/s and ETA; writes them as TensorBoard scalars under
  `train/` (each loss as `<scalar_prefix><name>`)."""

  def __init__(self, every_steps: int, scalar_prefix: str = "losses/", first_step: bool = True):
    self.every_steps, self.scalar_prefix = every_steps, scalar_prefix
    self.first_step = first_step  # also log the run's first step (its rate includes tracing)

  def before_train(self):
    t = self.trainer
    logging.info(f"{t.task.describe()}; {t.strategy.num_replicas_in_sync} replica(s)")
    self._t_start = self._t_window = time.time()
    self._steps_window = 0

  def steps_to_next(self, step):
    return steps_until(step, self.every_steps)

  def after_step(self, step, result):
    t = self.trainer
    done = int(result.done)
    self._steps_window += done
    first = step - done == t.start_step
    if not bool(result.applied) or not (step % self.every_steps == 0 or step == t.end_step or
                                        (first and self.first_step)):
      return
    values = {k: float(v) for k, v in result.losses.items()}
    sps = self._steps_window / max(time.time() - self._t_window, 1e-9)
    # The first window includes tracing and compilation; later ones measure the steps.
    rate = sps if not first else (step - t.start_step) / max(time.time() - self._t_start, 1e-9)
    lr = t.task.learning_rate(step)
    images = sps * t.task.global_batch_size
    with t.summary_writer("train").as_default(step=step):
      for k, v in values.items():
        tf.summary.scalar(f"{self.scalar_prefix}{k}", v)
      tf.summary.scalar("learning_rate", lr)
      tf.summary.scalar("steps_per_sec", sps)
      tf.summary.scalar("images_per_sec", images)
    logging.info(
        f"step {step}/{t.end_step} | {format_losses(values)} | lr {lr:.5f} | {sps:.2f} steps/s "
        f"{images:.1f} img/s | ETA {format_eta((t.end_step - step) / max(rate, 1e-9))}")
    self._t_window, self._steps_window = time.time(), 0


def format_losses(values: Dict[str, float]) -> str:
  """'loss 2.8570 (rpn_cls 0.693 rpn_box 0.012 ...)': the total (`total_loss`, else the first
  value) then every other term, without its `_loss` suffix."""
  total_key = "total_loss" if "total_loss" in values else next(iter(values))
  terms = " ".join(f"{k[:-5] if k.endswith('_loss') else k} {v:.3f}" for k, v in values.items()
                   if k != total_key)
  return f"loss {values[total_key]:.4f}" + (f" ({terms})" if terms else "")


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
