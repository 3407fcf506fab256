"""The tf.data pipeline: static shapes, deterministic with a seed, crowds kept as ignore regions."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import synthetic
from rethink_tf.data.input_pipeline import InputConfig, box_relative_masks, make_dataset

ANCHORS = dict(min_level=2, max_level=6, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=4.0)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  root = tmp_path_factory.mktemp("syn")
  ds = synthetic.SyntheticDataset(num_train=40, num_val=6, image_size=96, cache_dir=str(root))
  return InputConfig(synthetic=ds,
                     short_side=64,
                     max_long_side=64,
                     padded_size=(64, 64),
                     max_instances=8,
                     max_crowd=4,
                     mask_crop_size=16,
                     shuffle_buffer=40).prepare()


def _first(ds):
  return {k: v.numpy() for k, v in next(iter(ds)).items()}


def test_train_batches_have_static_shapes(cfg):
  ds = make_dataset(cfg, True, 4, ANCHORS, seed=1)
  spec = ds.element_spec
  num_anchors = 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
  expected = {
      "images": [4, 64, 64, 3], "image_size": [4, 2], "gt_boxes": [4, 8, 4], "gt_classes": [4, 8],
      "gt_masks": [4, 8, 16, 16], "crowd_boxes": [4, 4, 4], "rpn_labels": [4, num_anchors],
      "rpn_box_targets": [4, num_anchors, 4], "sample_seed": [4, 2]
  }
  assert {k: v.shape.as_list() for k, v in spec.items()} == expected
  b = _first(ds)
  valid = b["gt_classes"] > 0
  assert valid.any() and set(np.unique(b["gt_classes"][valid])) <= {1, 2, 3}
  boxes = b["gt_boxes"][valid]
  assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
  assert boxes.max() <= 64.0 and boxes.min() >= 0.0
  assert (b["gt_boxes"][~valid] == 0).all()
  labels = b["rpn_labels"]
  assert ((labels == 1).sum(1) <= 128).all() and ((labels >= 0).sum(1) <= 256).all()
  assert ((labels == 1).sum(1) > 0).any()


def test_same_seed_same_batches_different_seed_differs(cfg):
  a = [_first(make_dataset(cfg, True, 4, ANCHORS, seed=7)) for _ in range(2)]
  for k in a[0]:
    np.testing.assert_array_equal(a[0][k], a[1][k])
  c = _first(make_dataset(cfg, True, 4, ANCHORS, seed=8))
  assert not np.array_equal(a[0]["images"], c["images"])


def _batches(ds, n):
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_resumed_stream_continues_where_it_stopped(cfg):
  """start_index = examples consumed: batch 3 of a fresh stream is batch 1 of a resumed one
  (across the epoch boundary too: 40 train images, batch 4)."""
  full = _batches(make_dataset(cfg, True, 4, ANCHORS, seed=3), 13)
  resumed = _batches(make_dataset(cfg, True, 4, ANCHORS, seed=3, start_index=2 * 4), 11)
  for a, b in zip(full[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_pipelines_of_a_multi_worker_job_split_the_single_process_stream(cfg):
  """Pipeline i of 2 (batch 1) sees examples i, i + 2, ...: together, per step, the examples
  one pipeline with batch 2 would give."""
  single = _batches(make_dataset(cfg, True, 2, ANCHORS, seed=5), 3)
  parts = [
      _batches(
          make_dataset(cfg,
                       True,
                       1,
                       ANCHORS,
                       seed=5,
                       input_context=tf.distribute.InputContext(2, i, 2)), 3) for i in range(2)
  ]
  for step in range(3):
    for k in single[step]:
      joined = np.concatenate([parts[0][step][k], parts[1][step][k]])
      np.testing.assert_array_equal(single[step][k], joined, err_msg=k)


def test_eval_batches_carry_ids_and_scale(cfg):
  b = _first(make_dataset(cfg, False, 3, ANCHORS))
  assert b["images"].shape == (3, 64, 64, 3)
  np.testing.assert_allclose(b["scale"], 64 / 96)
  np.testing.assert_array_equal(b["orig_size"], [[96, 96]] * 3)
  ids = [i for batch in make_dataset(cfg, False, 4, ANCHORS) for i in batch["source_id"].numpy()]
  assert sorted(ids) == [1, 2, 3, 4, 5, 6]  # every validation image exactly once


def test_scale_jitter_changes_the_resized_size(cfg):
  jitter = InputConfig(synthetic=cfg.synthetic,
                       short_side=64,
                       max_long_side=64,
                       padded_size=(64, 64),
                       scale_jitter=(32, 64),
                       max_instances=8,
                       mask_crop_size=16).prepare()
  sizes = np.concatenate([
      b["image_size"].numpy()[:, 0] for b in make_dataset(jitter, True, 4, ANCHORS, seed=0).take(5)
  ])
  assert len(set(sizes.tolist())) > 1 and sizes.min() >= 32 and sizes.max() <= 64


def test_box_relative_masks_crop_exactly():
  mask = np.zeros((2, 20, 40), np.float32)
  mask[:, 5:15, 10:20] = 1.0
  boxes = np.array(
      [
          [5 / 20, 10 / 40, 15 / 20, 20 / 40],  # the object's own box
          [0 / 20, 5 / 40, 20 / 20, 25 / 40]
      ],  # twice its size, centred on it
      np.float32)
  crop = box_relative_masks(tf.constant(mask), tf.constant(boxes), 8).numpy()
  # Pixel-centre sampling: the border bins straddle the object edge, the binarized crop
  # (as mask targets use it) is the whole box.
  assert (crop[0] >= 0.5).all() and (crop[0, 1:-1, 1:-1] == 1.0).all()
  expected = np.zeros((8, 8))
  expected[2:6, 2:6] = 1.0
  np.testing.assert_array_equal(crop[1] >= 0.5, expected)


def test_missing_files_name_the_pattern(cfg):
  bad = InputConfig(train_pattern="/nonexistent/train-*.tfrecord", padded_size=(64, 64))
  with pytest.raises(FileNotFoundError, match="/nonexistent/train"):
    make_dataset(bad, True, 2, ANCHORS)


def test_keypoints_are_resized_flipped_with_left_right_swap_and_padded(tmp_path):
  """One 128 x 96 image with a person box and 3 keypoints (nose, left eye, right eye) read at
  64 px: the keypoints scale with the image and, in flipped examples, mirror with the eyes
  swapped; unlabeled ones stay (0, 0, 0)."""
  import json

  from PIL import Image

  from rethink_tf.data import coco_tfrecord
  names = ("nose", "left_eye", "right_eye", "left_ear")
  Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "a.png")
  person = {
      "id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 2000.0,
      "bbox": [20.0, 10.0, 60.0,
               70.0], "segmentation": [[20.0, 10.0, 80.0, 10.0, 80.0, 80.0, 20.0, 80.0]],
      "keypoints": [50.0, 30.0, 2, 40.0, 20.0, 2, 60.0, 22.0, 1, 0, 0, 0]
  }
  (tmp_path / "a.json").write_text(
      json.dumps({
          "images": [{"id": 1, "file_name": "a.png", "height": 96, "width": 128}],
          "categories": [{"id": 1, "name": "person",
                          "keypoints": list(names)}], "annotations": [person]
      }))
  coco_tfrecord.convert(str(tmp_path / "a.json"), str(tmp_path), str(tmp_path / "kp"), strict=True)
  pattern = str(tmp_path / "kp-*.tfrecord")
  cfg = InputConfig(train_pattern=pattern,
                    val_pattern=pattern,
                    category_ids=(1,),
                    short_side=48,
                    max_long_side=64,
                    padded_size=(64, 64),
                    max_instances=3,
                    mask_crop_size=8,
                    shuffle_buffer=1,
                    keypoint_names=names,
                    keypoint_oks_sigmas=(0.05,) * 4)
  batches = make_dataset(cfg, True, 1, ANCHORS, seed=0).take(12)
  scale = 0.5  # 96 x 128 -> 48 x 64
  original = np.reshape(person["keypoints"], (4, 3)).astype(np.float32)
  plain = original.copy()
  plain[:3, :2] *= scale
  flipped = plain[[0, 2, 1, 3]].copy()  # the eyes swap
  flipped[:3, 0] = 64.0 - flipped[:3, 0]
  seen = set()
  for b in batches:
    points = b["gt_keypoints"].numpy()[0]
    assert points.shape == (3, 4, 3) and (points[1:] == 0).all()
    is_flipped = b["gt_boxes"].numpy()[0, 0, 1] > 17.0  # the box's left edge: 10 or 24 px
    np.testing.assert_allclose(points[0], flipped if is_flipped else plain, atol=1e-4)
    seen.add(bool(is_flipped))
  assert seen == {True, False}
