"""A disk that fills during a checkpoint write: the run stops with a message naming the intact
previous checkpoint, the partial files are gone, and that checkpoint restores.

The disk is real: a tmpfs with room for one checkpoint and a half, mounted in a private mount
namespace (`unshare`), so the write fails with the kernel's ENOSPC partway through TF's
checkpoint writer.
"""

import os
import re
import subprocess
import sys

import numpy as np
import tensorflow as tf

from rethink_tf import config
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer

from conftest import REPO_ROOT

SCRIPT = """
set -u
mount -t tmpfs -o size={size_kb}k tmpfs {small}
{python} -m rethink_tf.train --gin_file=gin_configs/testing/tiny.gin --model_dir={small}/run \\
    --gin_param=TrainConfig.checkpoint_every_steps=5 --gin_param=TrainConfig.stop_at_step=10 \\
    > {out}/train.log 2>&1
echo $? > {out}/rc
df -k {small} > {out}/df
cp -a {small}/run {out}/run
"""


def _checkpoint_bytes(model_dir, step):
  return sum(
      os.path.getsize(os.path.join(model_dir, n))
      for n in os.listdir(model_dir)
      if n.startswith(f"ckpt-{step}."))


def test_disk_full_during_checkpoint_write_keeps_the_previous_one_restorable(
    tmp_path, tiny_reference_run):
  ref_dir, ref = tiny_reference_run
  assert ref.returncode == 0, ref.stderr[-2000:]
  size = _checkpoint_bytes(ref_dir, 20)  # every checkpoint of the tiny config has this size
  small, out = tmp_path / "small", tmp_path / "out"
  small.mkdir()
  out.mkdir()
  script = SCRIPT.format(size_kb=(size * 3 // 2 + 256 * 1024) // 1024,
                         small=small,
                         out=out,
                         python=sys.executable)
  r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  assert r.returncode == 0 and (out / "rc").exists(), (
      f"could not run in a private mount namespace with a tmpfs: {r.stderr[-2000:]}")
  log = (out / "train.log").read_text()
  assert (out / "rc").read_text().strip() == "1", log[-3000:]
  run = small / "run"
  m = re.search(
      r"error: could not write checkpoint (\S+) at step 10: (.*); removed its "
      r"partial files \[(.*)\]; the previous checkpoint (\S+) is intact: free space "
      r"in (\S+) and run the same command to resume from it", log)
  assert m, log[-3000:]
  assert m.group(1) == f"{run}/ckpt-10" and m.group(4) == f"{run}/ckpt-5"
  assert "No space left on device" in m.group(2) or "Resource exhausted" in m.group(2)
  assert m.group(3)  # something partial was written...
  copy = str(out / "run")
  assert not [n for n in os.listdir(copy) if n.startswith("ckpt-10")]  # ...and removed
  assert tf.train.latest_checkpoint(copy) == os.path.join(copy, "ckpt-5")
  assert "step 10/10 | loss" in log  # it failed at the save, not before

  # The previous checkpoint restores into the model: every object of the checkpoint matched
  # (restore_or_initialize asserts it) and the optimizer is back at step 5.
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  trainer = detection_trainer(copy, distribute.get_strategy("one_device"))
  assert trainer.restore_or_initialize() == 5
  assert int(trainer.optimizer.iterations.numpy()) == 5
  assert all(np.isfinite(v.numpy()).all() for v in trainer.model.variables)
