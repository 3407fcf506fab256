"""The run guard: one model_dir, one operative config.

A run resumed in its model_dir must be the same experiment: `check_run_config` compares the
operative config saved with the run to the one about to train and lists every binding that
changed. Only bindings that decide when to log, evaluate, save or stop may change freely.
"""

import os
import re
from typing import Dict, List, Tuple

import gin
import tensorflow as tf
from absl import logging

from rethink_tf.errors import ConfigError

# Bindings a resumed run may change without --allow_config_change: they decide when to log,
# evaluate, save or stop, not what is trained, or how to go on past a damaged step or record
# (a run stopped by one is resumed with the skip turned on).
RESUMABLE_CHANGES = frozenset([
    f"TrainConfig.{p}" for p in ("stop_at_step", "eval_every_steps", "log_every_steps",
                                 "checkpoint_every_steps", "keep_checkpoints", "steps_per_loop",
                                 "eval_batch_size", "eval_image_summaries", "skip_nonfinite_steps")
] + ["InputConfig.skip_damaged_records"])


def bindings(operative_config: str) -> Dict[str, str]:
  """{'configurable.param' (or macro name): value text} of a gin config string; values that
  span several lines are joined."""
  out: Dict[str, str] = {}
  key = None
  for line in operative_config.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    m = re.match(r"^([A-Za-z_][\w./]*)\s*=\s*(.*)$", line)
    if m and not line[0].isspace():
      key = m.group(1)
      out[key] = m.group(2).strip()
    elif key is not None:
      out[key] += " " + line.strip()
  return out


def config_changes(previous: str, current: str) -> List[Tuple[str, str, str]]:
  """(binding, previous value, current value) for every binding of `current` whose value
  differs in `previous`. Bindings `previous` lacks (parameters added to the code since) and
  `RESUMABLE_CHANGES` are not changes."""
  old, new = bindings(previous), bindings(current)
  return [(k, old[k], v)
          for k, v in sorted(new.items())
          if k in old and old[k] != v and k not in RESUMABLE_CHANGES]


def check_run_config(previous: str, current: str, model_dir: str,
                     allow_change: bool) -> List[Tuple[str, str, str]]:
  """Raises a ConfigError listing the changed bindings when `model_dir`'s run (`previous`
  operative config) was configured differently, unless `allow_change`; returns the changes."""
  changes = config_changes(previous, current)
  if changes and not allow_change:
    listed = "\n".join(f"  {k}: {a} -> {b}" for k, a, b in changes)
    raise ConfigError(
        f"{model_dir} holds a run with a different operative config ({len(changes)} "
        f"binding(s) changed):\n{listed}\nResuming would mix two experiments in one run: use "
        "a new --model_dir, or pass --allow_config_change to continue this run with the new "
        "values (recorded in config_changes.txt).")
  return changes


OPERATIVE_CONFIG_FILE = "operative_config.gin"
CONFIG_CHANGES_FILE = "config_changes.txt"


def verify_resume(model_dir: str, allow_change: bool, is_chief: bool = True):
  """Before a run in `model_dir` is restored: raises ConfigError when the run saved there was
  configured differently from the gin config about to train, unless `allow_change`; allowed
  changes are printed and appended to `config_changes.txt` (by the chief)."""
  path = os.path.join(model_dir, OPERATIVE_CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    previous = f.read()
  changes = check_run_config(previous, gin.operative_config_str(), model_dir, allow_change)
  if changes and is_chief:
    latest = tf.train.latest_checkpoint(model_dir)
    lines = [f"config changed when resuming from {latest} (--allow_config_change):"]
    lines += [f"  {k}: {a} -> {b}" for k, a, b in changes]
    logging.info("\n".join(lines))
    with open(os.path.join(model_dir, CONFIG_CHANGES_FILE), "a") as f:
      f.write("\n".join(lines) + "\n")
