"""The embedded synthetic dataset: deterministic, valid COCO, with crowds and empty images."""

import hashlib
import json
import os
import re

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from rethink_tf.data import synthetic
from rethink_tf.errors import ConfigError
from rethink_tf.evaluation.coco_evaluator import load_coco


def _digest(root):
  h = hashlib.sha256()
  for dirpath, _, files in sorted(os.walk(root)):
    for f in sorted(files):
      h.update(f.encode())
      h.update(open(os.path.join(dirpath, f), "rb").read())
  return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
  a = synthetic.generate_split(str(tmp_path / "a"), "val", 12, seed=5, image_size=96)
  synthetic.generate_split(str(tmp_path / "b"), "val", 12, seed=5, image_size=96)
  synthetic.generate_split(str(tmp_path / "c"), "val", 12, seed=6, image_size=96)
  assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
  assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
  assert json.load(open(a["annotations"]))["images"][0]["file_name"] == "val_000001.jpg"


def test_valid_coco_with_crowds_empties_and_occlusion(tmp_path):
  out = synthetic.generate_split(str(tmp_path), "train", 150, seed=0, image_size=128)
  data = json.load(open(out["annotations"]))
  coco = load_coco(out["annotations"])
  assert {c["name"] for c in data["categories"]} == {"circle", "square", "triangle"}
  per_image = {im["id"]: 0 for im in data["images"]}
  crowd = [a for a in data["annotations"] if a["iscrowd"]]
  for a in data["annotations"]:
    per_image[a["image_id"]] += 1
    m = coco.annToMask(a)
    assert m.sum() > 0
    x, y, w, h = a["bbox"]
    ys, xs = np.nonzero(m)
    assert xs.min() >= np.floor(x) - 1 and xs.max() <= x + w + 1
    if a["iscrowd"]:
      assert isinstance(a["segmentation"]["counts"], list)  # uncompressed RLE, as COCO
    else:
      assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6
  assert crowd, "some images must hold a crowd region"
  assert any(v == 0 for v in per_image.values()), "some images must have no objects"
  assert max(per_image.values()) >= 4
  # Occlusion: some pairs of objects in one image touch or overlap in their boxes.
  boxes_by_image = {}
  for a in data["annotations"]:
    boxes_by_image.setdefault(a["image_id"], []).append(a["bbox"])
  ious = []
  for boxes in boxes_by_image.values():
    if len(boxes) > 1:
      ious.append(
          mask_utils.iou(boxes, boxes, [0] * len(boxes))[np.triu_indices(len(boxes), 1)].max())
  assert max(ious) > 0.1


def test_cached_dataset_is_generated_once(tmp_path):
  ds = synthetic.SyntheticDataset(num_train=6, num_val=3, image_size=64, cache_dir=str(tmp_path))
  paths = ds.prepare()
  stamp = os.path.getmtime(os.path.join(ds.root, "DONE"))
  again = synthetic.SyntheticDataset(num_train=6, num_val=3, image_size=64,
                                     cache_dir=str(tmp_path)).prepare()
  assert paths == again
  assert os.path.getmtime(os.path.join(ds.root, "DONE")) == stamp
  other = synthetic.SyntheticDataset(num_train=7, num_val=3, image_size=64, cache_dir=str(tmp_path))
  assert other.root != ds.root
  assert len(json.load(open(paths["val_annotations"]))["images"]) == 3


def test_keypoint_task_adds_extreme_points_and_changes_nothing_else(tmp_path):
  plain = synthetic.generate_split(str(tmp_path / "plain"), "val", 40, seed=3, image_size=96)
  kp = synthetic.generate_split(str(tmp_path / "kp"),
                                "val",
                                40,
                                seed=3,
                                image_size=96,
                                keypoints=True)
  assert _digest(tmp_path / "plain" / "val") == _digest(tmp_path / "kp" / "val")  # images
  a, b = json.load(open(plain["annotations"])), json.load(open(kp["annotations"]))
  strip = lambda anns: [{k: v
                         for k, v in x.items()
                         if k not in ("keypoints", "num_keypoints")}
                        for x in anns]
  assert strip(a["annotations"]) == strip(b["annotations"])
  assert all(c["keypoints"] == list(synthetic.KEYPOINT_NAMES) for c in b["categories"])
  coco = load_coco(kp["annotations"])
  counts = {0: 0, 1: 0, 2: 0}
  for ann in b["annotations"]:
    points = np.reshape(ann["keypoints"], (4, 3))
    assert ann["num_keypoints"] == int((points[:, 2] > 0).sum())
    if ann["iscrowd"]:
      assert (points == 0).all()
      continue
    visible = coco.annToMask(ann)
    for x, y, v in points:
      counts[int(v)] += 1
      if v == 2:  # a visible extreme point touches the visible mask
        r, c = int(min(y, 95)), int(min(x, 95))
        assert visible[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].any(), (ann["id"], x, y)
    # Top above bottom, leftmost left of rightmost.
    assert points[0, 1] <= points[1, 1] or 0 in points[:2, 2]
    assert points[2, 0] <= points[3, 0] or 0 in points[2:, 2]
  assert counts[2] > 10 * counts[1] > 0  # mostly visible; occlusion hides some


def test_keypoint_dataset_converts_strictly_and_feeds_the_pipeline(tmp_path):
  from rethink_tf.data.input_pipeline import InputConfig, make_dataset
  ds = synthetic.SyntheticDataset(num_train=24,
                                  num_val=4,
                                  image_size=64,
                                  keypoints=True,
                                  cache_dir=str(tmp_path))
  assert ds.root != synthetic.SyntheticDataset(num_train=24,
                                               num_val=4,
                                               image_size=64,
                                               cache_dir=str(tmp_path)).root
  cfg = InputConfig(synthetic=ds,
                    short_side=64,
                    max_long_side=64,
                    padded_size=(64, 64),
                    max_instances=6,
                    mask_crop_size=8,
                    shuffle_buffer=24,
                    keypoint_names=synthetic.KEYPOINT_NAMES,
                    keypoint_oks_sigmas=(0.05,) * 4).prepare()  # strict conversion inside
  batch = next(
      iter(
          make_dataset(cfg,
                       True,
                       4,
                       dict(min_level=2, max_level=6, aspect_ratios=(1.0,), anchor_size=4.0),
                       seed=0)))
  points, valid = batch["gt_keypoints"].numpy(), batch["gt_classes"].numpy() > 0
  assert points.shape == (4, 6, 4, 3)
  assert (points[valid][..., 2] == 2).mean() > 0.5 and (points[~valid] == 0).all()


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(h=st.integers(synthetic.MIN_IMAGE_SIDE, 160),
                  w=st.integers(synthetic.MIN_IMAGE_SIDE, 160),
                  max_objects=st.integers(0, 12),
                  sizes=st.tuples(st.floats(10.0, 64.0), st.floats(10.0, 64.0)),
                  crowd=st.sampled_from([0.0, 0.5, 1.0]),
                  seed=st.integers(0, 2**31 - 1),
                  keypoints=st.booleans())
def test_every_accepted_image_is_valid(h, w, max_objects, sizes, crowd, seed, keypoints):
  """Over image sizes, object counts and sizes (crowds included): images generate, and every
  annotation keeps at least one pixel (polygons and crowd RLE alike)."""
  rng = np.random.default_rng(seed)
  img, anns = synthetic.make_image(rng, (h, w), 0 if max_objects == 0 else 1, max_objects,
                                   min(sizes), max(sizes), crowd, 0.05, keypoints)
  assert img.shape == (h, w, 3) and img.dtype == np.uint8
  assert sum(not a["iscrowd"] for a in anns) <= max_objects
  for a in anns:
    seg = a["segmentation"]
    rle = (mask_utils.frPyObjects(seg, h, w) if a["iscrowd"] else mask_utils.merge(
        mask_utils.frPyObjects(seg, h, w)))
    assert mask_utils.area(rle) >= 1, a
    if keypoints and not a["iscrowd"]:
      assert len(a["keypoints"]) == 3 * len(synthetic.KEYPOINT_NAMES)


@hypothesis.settings(max_examples=3, deadline=None, derandomize=True)
@hypothesis.given(sizes=st.lists(st.tuples(st.integers(synthetic.MIN_IMAGE_SIDE, 96),
                                           st.integers(synthetic.MIN_IMAGE_SIDE, 96)),
                                 min_size=1,
                                 max_size=3),
                  max_objects=st.integers(0, 8),
                  seed=st.integers(0, 1000))
def test_accepted_parameters_convert_strictly(tmp_path_factory, sizes, max_objects, seed):
  """Whole splits of accepted parameters pass the COCO converter's strict checks."""
  root = str(tmp_path_factory.mktemp("synthetic"))
  ds = synthetic.SyntheticDataset(num_train=6,
                                  num_val=2,
                                  seed=seed,
                                  max_objects=max_objects,
                                  image_sizes=sizes,
                                  num_shards=1,
                                  cache_dir=root)
  out = ds.prepare()
  coco = load_coco(out["val_annotations"])
  assert len(coco.getImgIds()) == 2


@pytest.mark.parametrize("params, named", [
    (dict(num_val=0), "SyntheticDataset.num_val = 0"),
    (dict(image_size=16), "SyntheticDataset.image_size = 16"),
    (dict(max_objects=-1), "SyntheticDataset.max_objects = -1"),
    (dict(num_shards=0), "SyntheticDataset.num_shards = 0"),
    (dict(image_sizes=[(64, 64), (8, 64)]), "SyntheticDataset.image_sizes[1] = 8"),
    (dict(image_sizes=[(64,)]), "SyntheticDataset.image_sizes = "),
])
def test_parameters_it_cannot_honour_are_refused_by_name_before_writing(tmp_path, params, named):
  with pytest.raises(ConfigError, match=re.escape(named)):
    synthetic.SyntheticDataset(cache_dir=str(tmp_path / "cache"), **params)
  assert not (tmp_path / "cache").exists()
