"""What a training run does about damaged input records.

By default an unreadable record stops the run with one line naming the shard, the record and its
byte offset, after a checkpoint at the last completed step (the `DamagedRecordStop` hook turns
the loop's DataLossError into it): TensorFlow's own error
names no file, and the deterministic stream would die at the same record after every restart,
so the message says how to find every damaged record and the two ways on. With
`InputConfig.skip_damaged_records` the `SkipDamagedRecords` hook replaces damaged training
shards by copies of their readable records before training, and reports how many it skipped.
"""

import os
from typing import List

import tensorflow as tf
from absl import logging

from rethink_tf.data import damaged_records
from rethink_tf.data.verify_tfrecords import Problem
from rethink_tf.training import distribute
from rethink_tf.training.hooks import Hook

REPAIRED_DIR = "repaired_shards"
SKIPPED_SCALAR = "data/skipped_records"


class DamagedInputError(RuntimeError):
  """A training or validation record could not be read; a checkpoint holds the last step."""


class DamagedRecordStop(Hook):
  """Replaces the input stream's error about a record (unreadable, or not decodable as a
  detection example: `damaged_records.is_damaged_input`) by the one-line `DamagedInputError`
  of `stop`."""

  def on_error(self, step, error):
    if damaged_records.is_damaged_input(error):
      return stop(self.trainer, step, error)
    return None


def stop(trainer, step: int, error: Exception) -> DamagedInputError:
  """Saves a checkpoint at `step` (the last completed one) and returns the one-line error that
  names the damaged record (the trainer raises it)."""
  trainer.checkpointer.save(step)
  saved = trainer.checkpointer.manager.latest_checkpoint
  cfg = trainer.task.input_cfg
  train_files = trainer.task.train_files or sorted(tf.io.gfile.glob(cfg.train_pattern))
  split, pattern = "training", cfg.train_pattern
  problems = damaged_records.locate(train_files, error)
  if not problems:
    val = damaged_records.locate(sorted(tf.io.gfile.glob(cfg.val_pattern)), error)
    if val:
      split, pattern, problems = "validation", cfg.val_pattern, val
  where = "; ".join(damaged_records.describe(p) for p in problems) or (
      f"a shard matching {pattern!r}: {damaged_records.error_text(error)}")
  ways = ("replace the shard, or train past damaged records with "
          "--gin_param=InputConfig.skip_damaged_records=True"
          if split == "training" else "replace the shard (evaluation never skips records)")
  return DamagedInputError(
      f"unreadable {split} data: {where}; checkpoint {saved} holds step {step}; {ways} "
      f"(rethink-tf-verify-tfrecords --pattern='{pattern}' lists every damaged record)")


class SkipDamagedRecords(Hook):
  """With `InputConfig.skip_damaged_records`: before training, every training shard is read
  once and a damaged one is replaced by a copy of its readable records in
  `model_dir/repaired_shards/` (kept across restarts; `damaged_records.repair`). Each skipped
  record is printed, the count is printed again at the end and written as the TensorBoard
  scalar `data/skipped_records` (train/)."""

  def __init__(self):
    self.skipped: List[Problem] = []

  def _enabled(self) -> bool:
    return bool(self.trainer.task.input_cfg.skip_damaged_records)

  def before_train(self):
    t = self.trainer
    if not self._enabled():
      return
    files = sorted(tf.io.gfile.glob(t.task.input_cfg.train_pattern))
    directory = os.path.join(t.model_dir, REPAIRED_DIR)
    if not t.is_chief:  # every worker reads all records; each writes its own copies
      _, task_type, task_id = distribute.worker_info(t.strategy)
      directory = os.path.join(t.model_dir, f".{task_type}_{task_id}_{REPAIRED_DIR}")
    t.task.train_files, self.skipped = damaged_records.repair(files, directory)
    for p in self.skipped:
      logging.info(f"skipping damaged record: {damaged_records.describe(p)}")
    logging.info(f"skip_damaged_records: {self._summary(len(files))}")
    self._scalar(t.start_step)

  def after_train(self):
    if self._enabled():
      logging.info(f"skip_damaged_records: {self._summary()}")
      self._scalar(self.trainer.end_step)

  def _summary(self, shards=None) -> str:
    bad = len({p.shard for p in self.skipped})
    where = f"{bad} of {shards} shard(s)" if shards is not None else f"{bad} shard(s)"
    return f"skipped {len(self.skipped)} damaged training record(s) in {where}"

  def _scalar(self, step: int):
    with self.trainer.summary_writer("train").as_default(step=step):
      tf.summary.scalar(SKIPPED_SCALAR, len(self.skipped))
