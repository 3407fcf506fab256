"""A tiny Cascade + Keypoint Mask R-CNN trains from scratch through `rethink_tf.train` on the
synthetic keypoint task: the cascade joins at its start step (later stages untouched before),
losses stay finite and fall, keypoint AP reaches eval_metrics.jsonl and TensorBoard, and the
checkpoint evaluates with test-time augmentation."""

import json
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import REPO_ROOT, TINY_CASCADE_KEYPOINTS, TINY_TRAIN

# The tiny config (20 steps of batch 2 on 64 px images) + cascade from step 10 + keypoints.
PARAMS = TINY_CASCADE_KEYPOINTS + [
    "build_model.cascade_start_step = 10", "TrainConfig.eval_every_steps = 20",
    "TrainConfig.checkpoint_every_steps = 5", "TrainConfig.eval_image_summaries = 0"
]
GIN_ARGS = [f"--gin_param={p}" for p in PARAMS]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("cascade_keypoints") / "run"
  r = subprocess.run(TINY_TRAIN + GIN_ARGS + [f"--model_dir={model_dir}"],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  return model_dir, r


def _scalars(logdir, prefix):
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
  acc.Reload()
  return {
      tag: {e.step: float(tf.make_ndarray(e.tensor_proto))
            for e in acc.Tensors(tag)} for tag in acc.Tags()["tensors"] if tag.startswith(prefix)
  }


def _later_stage_kernel(prefix):
  reader = tf.train.load_checkpoint(str(prefix))
  key, = [
      k for k in reader.get_variable_to_shape_map()
      if "cascade_box_predictors/1/bbox_pred/kernel" in k and "OPTIMIZER" not in k
  ]
  return reader.get_tensor(key)


def test_cascade_joins_at_its_step_and_losses_fall(run):
  model_dir, r = run
  assert "cascade: stages 2-3 wait for step 10 (now 0)" in r.stdout
  assert "cascade: stages 2-3 train from step 10 (now 10)" in r.stdout
  losses = _scalars(model_dir / "train", "losses/")
  steps = sorted(losses["losses/total_loss"])
  assert steps == [5, 10, 15, 20]
  for tag, values in losses.items():
    assert all(np.isfinite(v) for v in values.values()), (tag, values)
  for k in (2, 3):  # zero while inactive (the step-10 update ran before the switch)
    for term in ("cls", "box"):
      v = losses[f"losses/fast_rcnn_{term}_loss_stage{k}"]
      assert v[5] == v[10] == 0.0, v
    assert losses[f"losses/fast_rcnn_cls_loss_stage{k}"][20] > 0
  # Stage 1, mask and keypoint losses fall over the run.
  first = {t: v[5] for t, v in losses.items()}
  last = {t: v[20] for t, v in losses.items()}
  for term in ("fast_rcnn_cls_loss", "keypoint_loss", "mask_loss"):
    assert last[f"losses/{term}"] < first[f"losses/{term}"], (term, first, last)
  # Stages 2-3 are untouched before step 10 (no gradient, no decay), trained after it.
  k5, k10, k15 = (_later_stage_kernel(model_dir / f"ckpt-{s}") for s in (5, 10, 15))
  np.testing.assert_array_equal(k5, k10)
  assert not np.array_equal(k10, k15)


def test_keypoint_ap_is_in_metrics_and_tensorboard(run):
  model_dir, _ = run
  lines = [json.loads(l) for l in open(model_dir / "eval_metrics.jsonl")]
  assert [l["step"] for l in lines] == [20]
  assert {"bbox", "segm", "keypoints"} <= set(lines[0])
  assert set(lines[0]["keypoints"]) == {
      "AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"
  }
  assert 0.0 <= lines[0]["keypoints"]["AP"] <= 1.0
  evals = _scalars(model_dir / "eval", "keypoints/")
  assert evals["keypoints/AP"] == {20: pytest.approx(lines[0]["keypoints"]["AP"])}


def test_test_time_augmentation_evaluates_and_one_augmentation_is_the_plain_evaluation(run):
  """TTA with only the unflipped base scale reproduces the run's own final evaluation to the
  last digit (boxes, masks and keypoints of the cascade keypoint model); flips
  x a second scale evaluate too, with detections inside the image and keypoints inside their
  boxes."""
  import gin

  from rethink_tf import config
  from rethink_tf.evaluation import coco_evaluator
  from rethink_tf.evaluation.evaluator import predict_coco_results, run_evaluation
  from rethink_tf.evaluation.tta import TestTimeAugmentation
  from rethink_tf.inference import build_for_inference
  model_dir, _ = run
  final = json.loads(open(model_dir / "eval_metrics.jsonl").readlines()[-1])
  config.parse_gin(["gin_configs/testing/tiny.gin"], PARAMS)
  model, cfg = build_for_inference(tf.train.latest_checkpoint(str(model_dir)))
  cfg.prepare(training=False)
  gin.clear_config()
  identity = run_evaluation(model, cfg, 4, tta=TestTimeAugmentation(flip=False))
  for iou_type in ("bbox", "segm", "keypoints"):
    assert identity[iou_type] == pytest.approx(final[iou_type], abs=1e-12), iou_type
  results = predict_coco_results(model, cfg, 4, tta=TestTimeAugmentation(scales=(80,)))
  assert results
  for r in results:
    x, y, w, h = r["bbox"]
    assert 0 <= x and 0 <= y and x + w <= 64 + 1e-3 and y + h <= 64 + 1e-3  # 64 px images
    px, py = np.array(r["keypoints"][0::3]), np.array(r["keypoints"][1::3])
    assert ((px >= x - 1e-3) & (px <= x + w + 1e-3)).all(), r
    assert ((py >= y - 1e-3) & (py <= y + h + 1e-3)).all(), r
  gt = coco_evaluator.load_coco(cfg.val_annotations)
  boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
  for iou_type, res, sigmas in (("bbox", results, None), ("segm", results, None),
                                ("keypoints", boxes_only, cfg.keypoint_oks_sigmas)):
    ap = coco_evaluator.evaluate(gt, res, iou_type, kpt_oks_sigmas=sigmas)["AP"]
    assert 0.0 <= ap <= 1.0, iou_type
