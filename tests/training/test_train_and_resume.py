"""End-to-end training on the embedded data: metrics, summaries, config; kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import REPO_ROOT
from conftest import TINY_REFERENCE_ARGS as REFERENCE_ARGS
from conftest import TINY_TRAIN as TRAIN


def _run(args, **kw):
  return subprocess.run(TRAIN + args, cwd=REPO_ROOT, capture_output=True, text=True, **kw)


def _scalars(logdir):
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  return set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])


@pytest.fixture(scope="module")
def reference_run(tiny_reference_run):
  """One uninterrupted 20-step run (shared with the export tests): (model_dir, process)."""
  return tiny_reference_run


def _losses(logdir, tag="losses/total_loss"):
  """{step: value} of a scalar written by the trainer (float32, as logged)."""
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def test_train_writes_metrics_summaries_and_config(reference_run):
  model_dir, r = reference_run
  assert r.returncode == 0, r.stderr[-3000:]
  assert "final: box AP" in r.stdout and "ETA" in r.stdout and "steps/s" in r.stdout
  lines = [json.loads(l) for l in open(model_dir / "eval_metrics.jsonl")]
  assert [l["step"] for l in lines] == [10, 20]
  keys = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
  for l in lines:
    assert set(l["bbox"]) == keys and set(l["segm"]) == keys
  train_tags = _scalars(str(model_dir / "train"))
  for term in ("rpn_cls_loss", "rpn_box_loss", "fast_rcnn_cls_loss", "fast_rcnn_box_loss",
               "mask_loss", "total_loss", "weight_decay_loss"):
    assert f"losses/{term}" in train_tags
  assert {"learning_rate", "steps_per_sec"} <= train_tags
  eval_tags = _scalars(str(model_dir / "eval"))
  assert {f"bbox/{k}" for k in keys} | {f"segm/{k}" for k in keys} <= eval_tags
  operative = (model_dir / "operative_config.gin").read_text()
  assert "build_model.norm = 'GN'" in operative and "nx_schedule.num_x = 3" in operative
  # Evaluating the saved checkpoint reproduces the last evaluation.
  ev = subprocess.run([
      sys.executable, "-m", "rethink_tf.evaluate", "--gin_file=gin_configs/testing/tiny.gin",
      f"--model_dir={model_dir}"
  ],
                      cwd=REPO_ROOT,
                      capture_output=True,
                      text=True,
                      timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  result = json.loads(ev.stdout.strip().splitlines()[-1])
  assert result["bbox"]["AP"] == pytest.approx(lines[-1]["bbox"]["AP"], abs=1e-9)


def _checkpoint_steps(model_dir):
  """Steps of the checkpoints the manager has recorded as complete (its state file)."""
  try:
    text = open(os.path.join(model_dir, "checkpoint")).read()
  except FileNotFoundError:
    return []
  return sorted({int(s) for s in re.findall(r'all_model_checkpoint_paths: ".*ckpt-(\d+)"', text)})


def test_sigterm_saves_exits_cleanly_and_resumes_identically(tmp_path, reference_run):
  """Preemption: SIGTERM mid-run -> checkpoint at the current step, exit 0; the restarted run
  continues there and logs the same losses as the uninterrupted reference."""
  model_dir = str(tmp_path / "run")
  args = [f"--model_dir={model_dir}", *REFERENCE_ARGS]
  proc = subprocess.Popen(TRAIN + args,
                          cwd=REPO_ROOT,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True)
  out = []
  for line in proc.stdout:  # first progress line: training is under way
    out.append(line)
    if line.startswith("step "):
      proc.send_signal(signal.SIGTERM)
      break
  out += proc.stdout.readlines()
  assert proc.wait(timeout=600) == 0, "".join(out)[-3000:]
  text = "".join(out)
  m = re.search(r"preempted \(SIGTERM\) at step (\d+): saved .*ckpt-(\d+)", text)
  assert m and m.group(1) == m.group(2), text[-3000:]
  stopped = int(m.group(1))
  assert 0 < stopped < 20 and _checkpoint_steps(model_dir)[-1] == stopped
  r = _run(args, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from {model_dir}/ckpt-{stopped} at step {stopped}" in r.stdout
  ref_dir, ref = reference_run
  assert ref.returncode == 0
  expected = _losses(str(ref_dir / "train"))
  got = _losses(os.path.join(model_dir, "train"))
  after = [s for s in got if s > stopped]
  assert after and max(after) == 20
  for step in after:
    assert got[step] == pytest.approx(expected[step], rel=1e-5), step
  lines = [json.loads(l) for l in open(os.path.join(model_dir, "eval_metrics.jsonl"))]
  ref_lines = [json.loads(l) for l in open(ref_dir / "eval_metrics.jsonl")]
  assert lines[-1]["step"] == 20
  assert lines[-1]["bbox"]["AP"] == pytest.approx(ref_lines[-1]["bbox"]["AP"], abs=1e-6)


# Runs the trainer with TF's checkpoint commit (the state-file update that follows writing the
# files) replaced by: damage the files just written, then SIGKILL -- a crash mid-write.
CRASH_IN_SAVE = """
import os, signal, sys
from tensorflow.python.checkpoint import checkpoint_management as cm
record = cm.CheckpointManager._record_state
def crash(self):
  if self._latest_checkpoint.endswith("-10"):
    for name in os.listdir(self.directory):
      if name.startswith("ckpt-10."):
        with open(os.path.join(self.directory, name), "r+b") as f:
          f.truncate(max(os.path.getsize(f.name) // 2, 1))
    os.kill(os.getpid(), signal.SIGKILL)
  record(self)
cm.CheckpointManager._record_state = crash
from absl import app
from rethink_tf import train
train.define_common_flags()
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
  model_dir = str(tmp_path / "run")
  args = [
      f"--model_dir={model_dir}", "--gin_file=gin_configs/testing/tiny.gin",
      "--gin_param=TrainConfig.checkpoint_every_steps=5"
  ]
  crashed = subprocess.run([sys.executable, "-c", CRASH_IN_SAVE, *args],
                           cwd=REPO_ROOT,
                           capture_output=True,
                           text=True,
                           timeout=900)
  assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
  assert _checkpoint_steps(model_dir) == [5]  # the damaged ckpt-10 never became latest
  assert any(n.startswith("ckpt-10.") for n in os.listdir(model_dir))
  # The restart writes ckpt-10 again, whole, and it becomes the latest (stopping there: the
  # rest of the run is the reference run's business).
  r = subprocess.run(TRAIN[:3] + args + ["--gin_param=TrainConfig.stop_at_step=10"],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from {model_dir}/ckpt-5 at step 5" in r.stdout
  assert _checkpoint_steps(model_dir) == [5, 10]
  tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-10"))  # complete and readable
  # (A start after the end has nothing to do: tests/test_run_config.py shows it.)
