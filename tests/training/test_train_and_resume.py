"""End-to-end training on the embedded data: metrics, summaries, config; kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import REPO_ROOT

TRAIN = [sys.executable, "-m", "rethink_tf.train", "--gin_file=gin_configs/testing/tiny.gin"]


def _run(args, **kw):
  return subprocess.run(TRAIN + args, cwd=REPO_ROOT, capture_output=True, text=True, **kw)


def _scalars(logdir):
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  return set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])


def test_train_writes_metrics_summaries_and_config(tmp_path):
  model_dir = tmp_path / "run"
  r = _run([f"--model_dir={model_dir}", "--gin_param=TrainConfig.eval_every_steps=10"],
           timeout=900)
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
  ev = subprocess.run([sys.executable, "-m", "rethink_tf.evaluate",
                       "--gin_file=gin_configs/testing/tiny.gin", f"--model_dir={model_dir}"],
                      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
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


def test_killed_run_resumes_at_its_last_checkpoint(tmp_path):
  model_dir = str(tmp_path / "run")
  args = [f"--model_dir={model_dir}", "--gin_param=TrainConfig.checkpoint_every_steps=5",
          "--gin_param=TrainConfig.log_every_steps=5"]
  proc = subprocess.Popen(TRAIN + args, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  while not _checkpoint_steps(model_dir) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = _checkpoint_steps(model_dir)
  assert saved and saved[-1] < 20, f"no mid-run checkpoint to resume from: {saved}"
  r = _run(args, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  m = re.search(r"resumed from .*ckpt-(\d+) at step (\d+)", r.stdout)
  assert m, r.stdout[-2000:]
  assert int(m.group(1)) == int(m.group(2)) == saved[-1]
  first_step = int(re.search(r"^step (\d+)/20", r.stdout, re.M).group(1))
  assert first_step == saved[-1] + 5
  assert _checkpoint_steps(model_dir)[-1] == 20
  # A third start has nothing left to do.
  r = _run(args, timeout=600)
  assert "nothing to do" in r.stdout
