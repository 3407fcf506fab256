"""A checkpoint written before the RoI heads became one layer (tests/testdata/legacy_checkpoint)
evaluates to the same detections and AP, and resumes training."""

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from rethink_tf import config
from rethink_tf.checkpoint import legacy_layout
from rethink_tf.evaluation.evaluator import run_evaluation
from rethink_tf.inference import build_for_inference
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer

from conftest import TESTDATA

LEGACY = os.path.join(TESTDATA, "legacy_checkpoint")
PARAMS = [
    "build_model.cascade_ious = (0.5, 0.6, 0.7)", "build_model.cascade_start_step = 150",
    "SyntheticDataset.keypoints = True",
    "InputConfig.keypoint_names = ('top', 'bottom', 'left_point', 'right_point')",
    "InputConfig.keypoint_oks_sigmas = (0.05, 0.05, 0.05, 0.05)", "build_model.num_keypoints = 4",
    "build_model.keypoint_head_conv_dim = 32", "build_model.keypoint_head_num_conv = 2",
    "nx_schedule.iteration_scale = 0.00014814814814814815"
]


def _reference():
  with open(os.path.join(LEGACY, "evaluation.json")) as f:
    return json.load(f)


def _sorted(detections):
  return sorted(detections, key=lambda d: (d["image_id"], -d["score"]))


def test_a_checkpoint_of_the_previous_layout_evaluates_to_the_same_detections(tmp_path):
  assert legacy_layout.is_legacy(os.path.join(LEGACY, "ckpt-300"))
  config.parse_gin(["gin_configs/testing/tiny.gin"], PARAMS)
  model, cfg = build_for_inference(os.path.join(LEGACY, "ckpt-300"))
  assert bool(model.roi_heads.cascade_active.numpy())  # restored from model/cascade_active
  cfg.prepare(training=False)
  results = str(tmp_path / "detections.json")
  metrics = run_evaluation(model, cfg, results_path=results)
  ref = _reference()
  for iou_type in ("bbox", "segm", "keypoints"):
    assert round(metrics[iou_type]["AP"], 3) == round(ref["metrics"][iou_type]["AP"], 3), iou_type
  assert metrics["bbox"]["AP"] > 0.01 and metrics["segm"]["AP"] > 0.005
  with open(results) as f:
    ours = _sorted(json.load(f))
  theirs = _sorted(ref["detections"])
  assert len(ours) == len(theirs) == 103
  assert [d["image_id"] for d in ours] == [d["image_id"] for d in theirs]
  assert [d["category_id"] for d in ours] == [d["category_id"] for d in theirs]
  np.testing.assert_allclose([d["bbox"] for d in ours], [d["bbox"] for d in theirs], atol=1e-3)
  np.testing.assert_allclose([d["score"] for d in ours], [d["score"] for d in theirs], atol=1e-5)
  np.testing.assert_allclose([d["keypoints"] for d in ours], [d["keypoints"] for d in theirs],
                             atol=1e-3)


def test_a_checkpoint_of_the_previous_layout_resumes_training(tmp_path, capsys):
  model_dir = tmp_path / "run"
  shutil.copytree(LEGACY, model_dir)
  config.parse_gin(["gin_configs/testing/tiny.gin"], PARAMS + ["TrainConfig.stop_at_step = 304"])
  trainer = detection_trainer(str(model_dir), distribute.get_strategy("one_device"))
  reader = tf.train.load_checkpoint(os.path.join(LEGACY, "ckpt-300"))
  kernel = "model/mask_head/convs/0/conv/kernel/.ATTRIBUTES/VARIABLE_VALUE"
  trainer.train()
  out = capsys.readouterr().out
  assert f"resumed from {model_dir}/ckpt-300 at step 300" in out
  assert trainer.completed and int(trainer.optimizer.iterations.numpy()) == 304
  assert "step 304/304 | loss" in out
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest.endswith("ckpt-304") and not legacy_layout.is_legacy(latest)
  # Four SGD steps moved the restored weights a little, not back to a fresh initialization.
  mask_conv = trainer.model.roi_heads.branch("mask").convs[0].conv.kernel.numpy()
  before = reader.get_tensor(kernel)
  assert 0 < np.abs(mask_conv - before).max() < 0.05 * np.abs(before).max()
