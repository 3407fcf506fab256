"""The pre-training stage: its synthetic classification set, the backbone checkpoint and metadata
it writes, and the detector that init mode `pretrained` builds from them."""

import json
import re
import signal
import subprocess

import numpy as np
import tensorflow as tf

from rethink_tf import config
from rethink_tf.checkpoint import init as init_lib
from rethink_tf.data import synthetic, synthetic_classification
from rethink_tf.modeling.build import build_model
from rethink_tf.tools import compare_curves
from rethink_tf.training import pretraining

from conftest import REPO_ROOT, TINY_PRETRAIN


def test_classification_set_is_seeded_balanced_and_not_the_detection_classes():
  x, y = synthetic_classification.generate(300, seed=3, size=48)
  assert x.shape == (300, 48, 48, 3) and x.dtype == np.uint8 and y.dtype == np.int32
  x2, y2 = synthetic_classification.generate(40, seed=3, size=48)
  np.testing.assert_array_equal(x2, x[:40])
  np.testing.assert_array_equal(y2, y[:40])
  assert not np.array_equal(synthetic_classification.generate(40, seed=4, size=48)[0], x2)
  counts = np.bincount(y, minlength=10)
  assert len(counts) == 10 and counts.min() >= 15  # every class, roughly balanced
  detection = {c["name"] for c in synthetic.CATEGORIES}
  assert not detection & set(synthetic_classification.CLASS_NAMES)


def test_pretraining_writes_a_backbone_the_detector_restores(tiny_pretrained_run):
  pre_dir, model_dir, p, t = tiny_pretrained_run
  assert p.returncode == 0, p.stderr[-3000:]
  assert "validation top-1" in p.stdout and "img/s" in p.stdout and "ETA" in p.stdout
  meta = json.load(open(pre_dir / "backbone.json"))
  assert meta["images_seen"] == 30 * 16 and meta["steps"] == 30 and meta["batch_size"] == 16
  assert 0.0 <= meta["val_top1"] <= 1.0
  assert meta["channel_order"] == "RGB" and len(meta["pixel_mean"]) == 3
  train = compare_curves.read_scalars(str(pre_dir / "train"))
  assert [s for s, _ in train["loss"]] == [10, 20, 30]
  assert all(np.isfinite(v) for _, v in train["loss"])
  assert [s for s, _ in compare_curves.read_scalars(str(pre_dir / "eval"))["top1"]] == [10, 20, 30]

  # The detector of the same gin file restores every backbone variable from it.
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  model = build_model(num_classes=4, image_size=(64, 64))
  model.backbone(tf.zeros([1, 64, 64, 3]))
  init_lib.restore_backbone(model.backbone, str(pre_dir / "backbone"))
  reader = tf.train.load_checkpoint(str(pre_dir / "backbone"))
  saved = {
      reader.get_tensor(k).tobytes()
      for k, _ in tf.train.list_variables(str(pre_dir / "backbone"))
      if k.startswith("backbone/")
  }
  assert model.backbone.variables and all(
      v.numpy().tobytes() in saved for v in model.backbone.variables)

  # Fine-tuning from it: restored, same pixel convention, evaluated like the scratch run.
  assert t.returncode == 0, t.stderr[-3000:]
  assert f"initialized the backbone from {pre_dir}/backbone" in t.stdout
  assert [json.loads(line)["step"] for line in open(model_dir / "eval_metrics.jsonl")] == [10, 20]

  # Running the stage again does nothing: the metadata file marks a complete checkpoint.
  assert pretraining.pretrain(str(pre_dir)) == meta


def test_pretraining_saves_on_sigterm_and_resumes_there(tmp_path):
  """Pre-training runs on the generic loop: a SIGTERM saves the step reached and stops; the
  same command resumes there and finishes."""
  pre_dir = tmp_path / "pretrain"
  command = TINY_PRETRAIN + [
      f"--model_dir={pre_dir}", "--gin_param=PretrainConfig.checkpoint_every_steps=100"
  ]
  proc = subprocess.Popen(command,
                          cwd=REPO_ROOT,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step 10/30"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=600)
  out = "".join(lines) + out
  assert proc.returncode == 0, err[-3000:]
  m = re.search(r"preempted \(SIGTERM\) at step (\d+): saved (\S+);", out)
  assert m, out[-3000:]
  step = int(m.group(1))
  assert 10 <= step < 30 and m.group(2) == f"{pre_dir}/ckpt-{step}"
  assert not (pre_dir / "backbone.json").exists()

  r = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from {pre_dir}/ckpt-{step}" in r.stdout
  assert f"step {step + 1}/30" in r.stdout or "step 30/30" in r.stdout
  meta = json.loads((pre_dir / "backbone.json").read_text())
  assert meta["steps"] == 30 and meta["images_seen"] == 30 * 16
