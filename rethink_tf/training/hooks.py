"""What happens between training steps, one hook per concern (detectron2's `hooks.py`).

The loop (`trainer.py`) calls, in the order the hooks were given: `before_train()` once,
`after_step(step, result)` after every call of the compiled loop (`step` is the step reached,
`result` its `StepResult`), and `after_train()` once at the end, also when training stops with
an error. `steps_to_next(step)` bounds the steps of the next loop call, so a compiled call of
several steps never runs past a hook's event. Every worker of a multi-worker job runs every
hook (checkpoint saves and the preemption vote are collectives); what lands on disk is the
chief's.
"""

import collections
import json
import os
import re
import signal
import threading
import time
from typing import Dict, Optional

import gin
import tensorflow as tf

from rethink_tf import run_config
from rethink_tf.evaluation import visualize
from rethink_tf.evaluation.evaluator import run_evaluation
from rethink_tf.training import distribute, divergence, run_files

EVAL_METRICS_FILE = "eval_metrics.jsonl"
SCHEDULE_FILE = "schedule.json"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
CONFIG_CHANGES_FILE = "config_changes.txt"

# losses: {name: scalar tensor} of the call's last step; done: steps the call ran; applied:
# whether that last step's update was applied (False: a non-finite loss or gradient).
StepResult = collections.namedtuple("StepResult", ["losses", "done", "applied"])


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""


class Hook:
  """Base class: every method does nothing. `trainer` is set by the Trainer."""

  trainer = None

  def before_train(self):
    pass

  def after_step(self, step: int, result: StepResult):
    pass

  def after_train(self):
    pass

  def steps_to_next(self, step: int) -> Optional[int]:
    """Steps from `step` to this hook's next event, or None when it has none."""
    return None


def _to_next(step: int, period: int) -> Optional[int]:
  return period - step % period if period else None


class RunConfigGuard(Hook):
  """Refuses (ConfigError) to continue a run in model_dir that was trained with another
  operative config, unless `allow_config_change`; allowed changes are printed and appended
  to `config_changes.txt`. Writes the run's `config.gin`, `schedule.json` and, once the model
  is traced, `operative_config.gin`."""

  def __init__(self, allow_config_change: bool = False):
    self.allow_config_change = allow_config_change

  def before_train(self):
    t = self.trainer
    path = os.path.join(t.model_dir, OPERATIVE_CONFIG_FILE)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        previous = f.read()
      changes = run_config.check_run_config(previous, gin.operative_config_str(), t.model_dir,
                                            self.allow_config_change)
      if changes and t.is_chief:
        latest = tf.train.latest_checkpoint(t.model_dir)
        lines = [f"config changed when resuming from {latest} (--allow_config_change):"]
        lines += [f"  {k}: {a} -> {b}" for k, a, b in changes]
        print("\n".join(lines), flush=True)
        with open(os.path.join(t.model_dir, CONFIG_CHANGES_FILE), "a") as f:
          f.write("\n".join(lines) + "\n")
    if t.is_chief:
      run_files.write_text(os.path.join(t.model_dir, "config.gin"), gin.config_str())
      s = t.schedule  # for tools that plot it: LR scalars are too coarse to place a decay
      run_files.write_text(
          os.path.join(t.model_dir, SCHEDULE_FILE),
          json.dumps({
              "total_steps": s.total_steps, "boundaries": list(s.boundaries), "base_lr": s.base_lr,
              "warmup_steps": s.warmup_steps, "decay_factor": s.decay_factor,
              "global_batch_size": t.cfg.global_batch_size
          }))
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
  """Restores or initializes the model, saves every `every_steps` and at the end, and turns
  SIGTERM (preemption) into a save at the current step followed by a clean stop.

  Every worker takes part in a save (a collective); only the chief's lands in model_dir, the
  others write to a scratch directory they delete afterwards. A checkpoint becomes the latest
  only once it is completely written (TF writes the files, then the `checkpoint` state file),
  so a crash mid-write leaves the previous one restorable; a failed write (a full disk)
  removes the new checkpoint's partial files and raises CheckpointWriteError.
  """

  def __init__(self, trainer, every_steps: int, keep: int):
    self.every_steps = every_steps
    _, task_type, task_id = distribute.worker_info(trainer.strategy)
    self.directory = (trainer.model_dir if trainer.is_chief else os.path.join(
        trainer.model_dir, f".{task_type}_{task_id}_scratch"))
    self.manager = tf.train.CheckpointManager(trainer.task.checkpoint,
                                              self.directory,
                                              max_to_keep=keep)
    self._sigterm = threading.Event()
    self._previous_handler = None

  def before_train(self):
    self.trainer.start_step = self.trainer.restore_or_initialize()
    # Main thread only: signal handlers cannot be installed elsewhere.
    if threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM,
                                             lambda signum, frame: self._sigterm.set())

  def steps_to_next(self, step):
    return _to_next(step, self.every_steps)

  def after_step(self, step, result):
    t = self.trainer
    if self._preemption_requested():
      self.save(step)
      t.preempted = True
      saved = self.manager.latest_checkpoint if t.is_chief else "the chief's checkpoint"
      print(
          f"preempted (SIGTERM) at step {step}: saved {saved}; run the same command "
          "again to resume",
          flush=True)
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


class CascadeStart(Hook):
  """Turns Cascade R-CNN's later stages on once the step reaches `start_step` (also right
  after a resume; the flag is checkpointed with the model)."""

  def __init__(self, model, start_step: int):
    if start_step and model.num_stages == 1:
      raise run_config.ConfigError(
          f"TrainConfig.cascade_start_step = {start_step} but the model has no cascade "
          "stages: bind build_model.cascade_ious = (0.5, 0.6, 0.7)")
    self.model, self.start_step = model, start_step

  def before_train(self):
    self._set(self.trainer.start_step)

  def steps_to_next(self, step):
    if self.model.num_stages > 1 and step < self.start_step:
      return self.start_step - step
    return None

  def after_step(self, step, result):
    self._set(step)

  def _set(self, step: int):
    if self.model.num_stages == 1:
      return
    active = step >= self.start_step
    if bool(self.model.cascade_active.numpy()) != active:
      self.model.cascade_active.assign(active)
      state = "train from" if active else "wait for"
      print(
          f"cascade: stages 2-{self.model.num_stages} {state} step {self.start_step} "
          f"(now {step})",
          flush=True)


class DivergenceGuard(Hook):
  """After a step that was not applied (non-finite loss or gradient): a warning while
  `allowed` skipped steps allow, else a FloatingPointError naming the step, every loss term
  and the last good checkpoint (nothing is saved after the bad step)."""

  def __init__(self, allowed: int):
    self.allowed = allowed

  def after_step(self, step, result):
    if bool(result.applied):
      return
    t = self.trainer
    values = {k: float(v) for k, v in result.losses.items()}
    skipped = int(t.task.skipped_steps.numpy())
    message = divergence.nonfinite_message(step, values, skipped, self.allowed,
                                           tf.train.latest_checkpoint(t.model_dir))
    with t.summary_writer("train").as_default(step=step):
      tf.summary.scalar("skipped_nonfinite_steps", skipped)
    if skipped > self.allowed:
      raise FloatingPointError(message)
    print(f"warning: {message}", flush=True)


class Progress(Hook):
  """Prints the schedule, then every `every_steps` (and at the first and last step) the
  losses, LR, steps/s, images/s and ETA; writes them as TensorBoard scalars under `train/`."""

  def __init__(self, every_steps: int):
    self.every_steps = every_steps

  def before_train(self):
    t, s = self.trainer, self.trainer.schedule
    print(
        f"schedule: {s.total_steps} steps at global batch {t.cfg.global_batch_size}, "
        f"LR {s.base_lr:g} decayed x{s.decay_factor:g} at {list(s.boundaries)}, warmup "
        f"{s.warmup_steps} steps; {t.strategy.num_replicas_in_sync} replica(s)",
        flush=True)
    self._t_start = self._t_window = time.time()
    self._steps_window = 0

  def steps_to_next(self, step):
    return _to_next(step, self.every_steps)

  def after_step(self, step, result):
    t = self.trainer
    done = int(result.done)
    self._steps_window += done
    first = step - done == t.start_step
    if not bool(result.applied) or not (step % self.every_steps == 0 or step == t.end_step or
                                        first):
      return
    values = {k: float(v) for k, v in result.losses.items()}
    sps = self._steps_window / max(time.time() - self._t_window, 1e-9)
    # The first window includes tracing and compilation; later ones measure the steps.
    rate = sps if not first else (step - t.start_step) / max(time.time() - self._t_start, 1e-9)
    lr = t.schedule.lr_at(step)
    images = sps * t.cfg.global_batch_size
    with t.summary_writer("train").as_default(step=step):
      for k, v in values.items():
        tf.summary.scalar(f"losses/{k}", v)
      tf.summary.scalar("learning_rate", lr)
      tf.summary.scalar("steps_per_sec", sps)
      tf.summary.scalar("images_per_sec", images)
    mask = f" mask {values['mask_loss']:.3f}" if "mask_loss" in values else ""
    print(
        f"step {step}/{t.end_step} | loss {values['total_loss']:.4f} (rpn "
        f"{values['rpn_cls_loss']:.3f}/{values['rpn_box_loss']:.3f} cls "
        f"{values['fast_rcnn_cls_loss']:.3f} box {values['fast_rcnn_box_loss']:.3f}{mask}) | "
        f"lr {lr:.5f} | {sps:.2f} steps/s {images:.1f} img/s | "
        f"ETA {format_eta((t.end_step - step) / max(rate, 1e-9))}",
        flush=True)
    self._t_window, self._steps_window = time.time(), 0


class Evaluation(Hook):
  """COCO evaluation on the host (chief only) every `every_steps` and at the schedule's end:
  TensorBoard scalars `bbox/AP`, ... and prediction images under `eval/`, a line in
  `eval_metrics.jsonl`, the metrics in `trainer.metrics`."""

  def __init__(self, every_steps: int, batch_size: int, image_summaries: int):
    self.every_steps, self.batch_size = every_steps, batch_size
    self.image_summaries = image_summaries

  def steps_to_next(self, step):
    return _to_next(step, self.every_steps)

  def after_step(self, step, result):
    t = self.trainer
    if t.is_chief and ((self.every_steps and step % self.every_steps == 0) or
                       step == t.schedule.total_steps):
      t.metrics = self.evaluate(step)

  def evaluate(self, step: int) -> Dict[str, Dict[str, float]]:
    t = self.trainer
    metrics = run_evaluation(t.model, t.input_cfg, self.batch_size)
    writer = t.summary_writer("eval")
    with writer.as_default(step=step):
      for iou_type, stats in metrics.items():
        for k, v in stats.items():
          tf.summary.scalar(f"{iou_type}/{k}", v)
      if self.image_summaries:
        pictures = visualize.prediction_images(t.model, t.input_cfg, self.image_summaries)
        tf.summary.image("predictions", pictures, max_outputs=len(pictures))
    writer.flush()
    run_files.append_line(os.path.join(t.model_dir, EVAL_METRICS_FILE),
                          json.dumps({"step": step, **metrics}))
    print(f"eval @ step {step}: {format_metrics(metrics)}", flush=True)
    return metrics


def format_metrics(metrics: Dict[str, Dict[str, float]]) -> str:
  """'box AP 0.601 (AP50 0.850) | mask AP 0.567 (AP50 0.840)'; masks and keypoints only when
  evaluated."""
  names = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
  return " | ".join(
      f"{names[k]} AP {v['AP']:.3f} (AP50 {v['AP50']:.3f})" for k, v in metrics.items())


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
