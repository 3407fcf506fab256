"""Keypoints: flip swaps left and right, heatmap targets decode back to the keypoints, and
ground truth scores keypoint AP 1.0 through our evaluator (pycocotools, OKS)."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import keypoints as kp_flip
from rethink_tf.evaluation.coco_evaluator import detections_to_coco, evaluate, load_coco
from rethink_tf.modeling.roi_heads import keypoint as kp

S = 56


def test_flip_swaps_left_and_right_and_mirrors_x():
  perm = kp_flip.flip_permutation(kp_flip.COCO_PERSON_KEYPOINTS)
  names = kp_flip.COCO_PERSON_KEYPOINTS
  assert names[perm[names.index("left_eye")]] == "right_eye"
  assert names[perm[names.index("right_ankle")]] == "left_ankle"
  assert perm[names.index("nose")] == names.index("nose")
  assert sorted(perm) == list(range(17)) and all(perm[perm[i]] == i for i in range(17))
  rng = np.random.default_rng(0)
  points = np.concatenate(
      [rng.uniform(0, 100,
                   (3, 17, 2)), rng.integers(0, 3, (3, 17, 1))], -1).astype(np.float32)
  points[..., :2] *= points[..., 2:] > 0  # unlabeled keypoints are (0, 0, 0)
  flipped = kp_flip.flip_keypoints(tf.constant(points), 100.0, perm).numpy()
  i, j = names.index("left_wrist"), names.index("right_wrist")
  labeled = points[:, i, 2] > 0
  np.testing.assert_allclose(flipped[labeled, j, 0], 100.0 - points[labeled, i, 0])
  np.testing.assert_allclose(flipped[:, j, 1:], points[:, i, 1:])
  assert (flipped[points[:, perm, 2] == 0][:, :2] == 0).all()
  np.testing.assert_allclose(kp_flip.flip_keypoints(tf.constant(flipped), 100.0, perm).numpy(),
                             points,
                             atol=1e-4)


def _rois_and_bin_centre_keypoints(rng, n=6, k=17):
  y1, x1 = rng.uniform(0, 200, (2, n))
  h, w = rng.uniform(10, 150, (2, n))
  rois = np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32)
  bins = rng.integers(0, S, (n, k, 2))
  x = x1[:, None] + (bins[..., 0] + 0.5) * w[:, None] / S
  y = y1[:, None] + (bins[..., 1] + 0.5) * h[:, None] / S
  v = rng.integers(1, 3, (n, k))
  return rois, np.stack([x, y, v], -1).astype(np.float32), bins


def test_a_perfect_heatmap_decodes_to_the_annotated_keypoints():
  rng = np.random.default_rng(1)
  rois, points, bins = _rois_and_bin_centre_keypoints(rng)
  index, valid = kp.keypoint_targets(tf.constant(points), tf.constant(rois), S)
  assert (valid.numpy() == 1).all()
  np.testing.assert_array_equal(index.numpy(), bins[..., 1] * S + bins[..., 0])
  logits = tf.one_hot(index, S * S, on_value=20.0, off_value=-20.0)
  logits = tf.reshape(logits, [*index.shape, S, S])
  decoded = kp.decode_heatmaps(logits, tf.constant(rois)).numpy()
  np.testing.assert_allclose(decoded[..., :2], points[..., :2], atol=1e-3)
  assert (decoded[..., 2] == 20.0).all()
  # Its loss is ~0; a flat heatmap's is log(S * S).
  assert float(kp.keypoint_loss(logits, index, valid)) < 1e-6
  flat = tf.zeros_like(logits)
  assert float(kp.keypoint_loss(flat, index, valid)) == pytest.approx(np.log(S * S), rel=1e-5)


def test_any_keypoint_decodes_within_half_a_bin_and_unlabeled_or_outside_ones_are_invalid():
  rng = np.random.default_rng(2)
  rois, _, _ = _rois_and_bin_centre_keypoints(rng)
  y1, x1, y2, x2 = rois.T
  x = rng.uniform(x1[:, None], x2[:, None], (6, 17))
  y = rng.uniform(y1[:, None], y2[:, None], (6, 17))
  x[0, 0], y[0, 0] = x2[0], y2[0]  # on the far corner: the last bin
  v = np.full((6, 17), 2.0)
  v[1, 3] = 0  # unlabeled
  x[2, 4] = x2[2] + 1.0  # outside its RoI
  points = np.stack([x, y, v], -1).astype(np.float32)
  index, valid = kp.keypoint_targets(tf.constant(points), tf.constant(rois), S)
  assert index.numpy()[0, 0] == S * S - 1
  assert valid.numpy()[1, 3] == 0 and valid.numpy()[2, 4] == 0 and valid.numpy().sum() == 100
  logits = tf.reshape(tf.one_hot(index, S * S), [6, 17, S, S])
  decoded = kp.decode_heatmaps(logits, tf.constant(rois)).numpy()
  half_bin = np.stack([(x2 - x1) / S, (y2 - y1) / S], -1)[:, None, :] / 2
  err = np.abs(decoded[..., :2] - points[..., :2])
  ok = valid.numpy() > 0
  assert (err[ok] <= half_bin.repeat(17, 1)[ok] + 1e-3).all()


def _person_gt():
  """Two images, three people with 17 keypoints each at bin centres of their boxes."""
  rng = np.random.default_rng(3)
  rois, points, _ = _rois_and_bin_centre_keypoints(rng, n=3)
  points[0, 5, 2] = 0
  points[0, 5, :2] = 0  # one unlabeled keypoint
  anns = []
  for i, (roi, p) in enumerate(zip(rois, points)):
    y1, x1, y2, x2 = (float(v) for v in roi)
    anns.append({
        "id": i + 1, "image_id": 1 + i % 2, "category_id": 1, "iscrowd": 0,
        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
        "keypoints": [round(float(v), 4) for v in p.reshape(-1)], "num_keypoints": int((p[:, 2]
                                                                                        > 0).sum())
    })
  gt = {
      "images": [{"id": 1, "height": 400, "width": 400}, {"id": 2, "height": 400, "width": 400}],
      "categories": [{"id": 1, "name": "person",
                      "keypoints": list(kp_flip.COCO_PERSON_KEYPOINTS)}], "annotations": anns
  }
  return gt, rois, points


def test_ground_truth_keypoints_score_ap_1_through_heatmaps_and_our_evaluator():
  gt, rois, points = _person_gt()
  index, _ = kp.keypoint_targets(tf.constant(points), tf.constant(rois), S)
  logits = tf.reshape(tf.one_hot(index, S * S, on_value=10.0), [3, 17, S, S])
  decoded = kp.decode_heatmaps(logits, tf.constant(rois)).numpy()
  results = []
  for i in range(3):
    results += detections_to_coco(1 + i % 2,
                                  rois[i:i + 1],
                                  np.array([0.9]),
                                  np.array([1]),
                                  keypoints=decoded[i:i + 1])
  stats = evaluate(load_coco(gt), results, "keypoints")
  assert set(stats) == {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}
  assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
  # Keypoints 10 px off score lower: the evaluation can fail.
  for r in results:
    r["keypoints"] = [v + 10.0 if k % 3 == 0 else v for k, v in enumerate(r["keypoints"])]
  assert evaluate(load_coco(gt), results, "keypoints")["AP"] < 0.9
