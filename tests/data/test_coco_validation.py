"""Converter validation: one planted problem of each kind in real COCO data, `--strict`, and
a property test of the masks written against pycocotools' decoding."""

import copy
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from rethink_tf.data import coco_segmentation, coco_tfrecord
from rethink_tf.data import coco_validation as validation

from conftest import REPO_ROOT

SOURCE = "icevision_coco6"
BASE_ID = 343934  # a 480 x 640 image with one polygon annotation (id 150977)
BASE_ANN = 150977
# 17 keypoints (x, y, v) in the 480 x 640 base image; the fourth lies outside it.
KEYPOINTS = [v for k in range(17) for v in (10.0 + 30 * k, 50.0 + 20 * k, 1 + k % 2)]
KEYPOINTS[9] = 700.0


def _records(prefix):
  files = sorted(tf.io.gfile.glob(prefix + "-*.tfrecord"))
  return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _feature(ex, key):
  f = ex.features.feature[key]
  return list(f.bytes_list.value or f.float_list.value or f.int64_list.value)


def _masks(ex):
  """The instance masks of a record, uint8 [H, W] each."""
  return [np.asarray(Image.open(io.BytesIO(m))) for m in _feature(ex, "image/object/mask")]


def planted_dataset(testdata, tmp_path):
  """icevision's 6 COCO images with one planted problem of each kind (two for corrupt images:
  random bytes and a truncated JPEG). Returns (annotations path, image dir, planted) where
  planted maps each kind to the record ids (image or annotation) that carry it."""
  src = os.path.join(testdata, "coco", SOURCE)
  data = json.load(open(os.path.join(src, "annotations.json")))
  image_dir = tmp_path / "images"
  image_dir.mkdir()
  for name in os.listdir(os.path.join(src, "images")):
    (image_dir / name).write_bytes(open(os.path.join(src, "images", name), "rb").read())
  base = next(im for im in data["images"] if im["id"] == BASE_ID)
  h, w = base["height"], base["width"]
  jpeg = (image_dir / base["file_name"]).read_bytes()
  (image_dir / "random.jpg").write_bytes(os.urandom(5000))
  (image_dir / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  (image_dir / "resized.jpg").write_bytes(jpeg)
  big = 2**40  # ids beyond int32 on the planted records
  images = data["images"] + [
      {"id": big + 1, "file_name": "malformed.jpg", "height": "tall", "width": w},
      {**base, "id": BASE_ID, "file_name": "000000000089.jpg"},  # duplicate id
      {**base, "id": big + 3, "file_name": "missing.jpg"},
      {**base, "id": big + 4, "file_name": "random.jpg"},
      {**base, "id": big + 5, "file_name": "truncated.jpg"},
      {**base, "id": big + 6, "file_name": "resized.jpg", "height": h + 8},
  ]
  good = next(a for a in data["annotations"] if a["id"] == BASE_ANN)
  poly = good["segmentation"][0]

  def ann(k, **kw):
    return {**copy.deepcopy(good), "id": big + 100 + k, **kw}

  rle_ok = mask_utils.encode(
      np.asfortranarray((np.arange(h * w).reshape(h, w) % 97 < 40).astype(np.uint8)))
  planted_anns = [
      ann(0, bbox=[1, 2, 3]),  # malformed_annotation
      {**copy.deepcopy(good)},  # duplicate_annotation_id
      ann(2, image_id=big + 999),  # orphan_annotation
      ann(3, category_id=1000),  # unknown_category
      ann(4, bbox=[10, 10, 0, 5]),  # empty_box
      ann(5, bbox=[w + 10, 10, 20, 20]),  # box_outside_image
      ann(6, bbox=[w - 30, 100, 50, 40]),  # box_clipped (20 px over)
      ann(7, segmentation=[poly, [1, 2, 3, 4]]),  # invalid_polygon
      ann(8, segmentation=[[1, 2, 3, 4], [5, 6, 7]]),  # no_valid_polygon
      ann(9, segmentation={"size": [h, w], "counts": [5, 7]}),  # malformed_rle
      ann(10, segmentation=[[10, 10, 20, 20, 30, 30]]),  # empty_mask (collinear)
      {k: v for k, v in ann(11).items() if k != "area"},  # missing_area
      ann(
          12,
          iscrowd=1,
          segmentation={
              "size": [h, w],  # valid compressed RLE crowd
              "counts": rle_ok["counts"].decode()
          }),
      ann(13, category_id=1, keypoints=[100, 200, 2, 5]),  # malformed_keypoints
      ann(14, category_id=1, keypoints=KEYPOINTS),  # valid; one outside: v = 0
  ]
  # Persons name 17 keypoints, so every record carries 17 (x, y, v) per instance.
  categories = [{**c, "keypoints": [f"k{i}"
                                    for i in range(17)]} if c["id"] == 1 else c
                for c in data["categories"]]
  data = {
      **data, "images": images, "annotations": data["annotations"] + planted_anns,
      "categories": categories
  }
  path = tmp_path / "planted.json"
  path.write_text(json.dumps(data))
  planted = {
      "malformed_image": [big + 1],
      "duplicate_image_id": [BASE_ID],
      "missing_image": [big + 3],
      "corrupt_image": [big + 4, big + 5],
      "size_mismatch": [big + 6],
      "malformed_annotation": [big + 100],
      "duplicate_annotation_id": [BASE_ANN],
      "orphan_annotation": [big + 102],
      "unknown_category": [big + 103],
      "empty_box": [big + 104],
      "box_outside_image": [big + 105],
      "box_clipped": [big + 106],
      "invalid_polygon": [big + 107],
      "no_valid_polygon": [big + 108],
      "malformed_rle": [big + 109],
      "empty_mask": [big + 110],
      "missing_area": [big + 111],
      "malformed_keypoints": [big + 113, big + 114],
  }
  return str(path), str(image_dir), planted, data


def test_every_planted_problem_is_counted_named_and_handled_by_its_rule(testdata, tmp_path):
  ann_path, image_dir, planted, data = planted_dataset(testdata, tmp_path)
  assert set(planted) == set(validation.PROBLEMS)  # the test plants every kind there is
  out = str(tmp_path / "out")
  result = coco_tfrecord.convert(ann_path, image_dir, out, num_shards=2)

  assert result["problems"] == {k: len(v) for k, v in planted.items()}
  report = json.load(open(out + "-report.json"))["problem_records"]
  for kind, ids in planted.items():
    assert report[kind]["action"] == validation.PROBLEMS[kind].action
    for record_id, text in zip(ids, report[kind]["records"]):
      assert re.search(rf"\b{record_id}\b", text), (kind, text)

  # The six real images are written; the five planted image records are not.
  records = {int(_feature(ex, "image/source_id")[0]): ex for ex in _records(out)}
  assert set(records) == {im["id"] for im in data["images"][:6]}
  assert result["images"] == 6
  base = records[BASE_ID]
  h, w = 480, 640
  # Kept on the base image, in order: its own annotation, box_clipped, invalid_polygon
  # (repaired), missing_area (repaired), the crowd RLE, the two persons with keypoints.
  by_id = {a["id"]: a for a in data["annotations"]}
  big = 2**40
  kept = [BASE_ANN, big + 106, big + 107, big + 111, big + 112, big + 113, big + 114]
  masks = _masks(base)
  assert len(masks) == len(kept)
  boxes = np.stack(
      [_feature(base, f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")],
      1) * [h, w, h, w]
  x, y, bw, bh = by_id[big + 106]["bbox"]
  np.testing.assert_allclose(boxes[1], [y, x, y + bh, w], atol=1e-3)  # clipped at the right
  valid_only = mask_utils.decode(
      mask_utils.merge(mask_utils.frPyObjects([by_id[big + 107]["segmentation"][0]], h, w)))
  np.testing.assert_array_equal(masks[2], valid_only)
  areas = _feature(base, "image/object/area")
  assert areas[3] == masks[3].sum()  # area from the mask
  assert areas[0] == pytest.approx(by_id[BASE_ANN]["area"])  # JSON area kept
  np.testing.assert_array_equal(masks[4], mask_utils.decode(by_id[big + 112]["segmentation"]))
  assert _feature(base, "image/object/is_crowd") == [0, 0, 0, 0, 1, 0, 0]
  points = np.reshape(_feature(base, "image/object/keypoints"), (len(kept), 17, 3))
  assert (points[:5] == 0).all() and (points[5] == 0).all()  # none, or malformed
  expected = np.reshape(KEYPOINTS, (17, 3)).astype(np.float32)
  expected[3] = 0  # the one outside the image
  np.testing.assert_allclose(points[6], expected)
  assert result["crowd"] == 1 + sum(a.get("iscrowd", 0) for a in data["annotations"][:36])


def test_strict_fails_naming_every_record_and_writes_nothing(testdata, tmp_path):
  ann_path, image_dir, planted, _ = planted_dataset(testdata, tmp_path)
  out = str(tmp_path / "strict")
  r = subprocess.run([
      sys.executable, "-m", "rethink_tf.data.coco_tfrecord", f"--annotations={ann_path}",
      f"--image_dir={image_dir}", f"--output={out}", "--strict"
  ],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "20 problem(s) with --strict; nothing was written" in r.stderr
  lines = [l.strip() for l in r.stderr.splitlines() if re.match(r"\s+\w+: ", l)]
  for kind, ids in planted.items():
    for record_id in ids:
      assert any(l.startswith(f"{kind}:") and re.search(rf"\b{record_id}\b", l) for l in lines), (
          kind, record_id)
  assert not list(tmp_path.glob("strict*"))  # no shard, no temporary file, no report


def test_clean_real_data_has_no_problems_under_strict(testdata, tmp_path):
  for name in ("icevision_coco6", "cocotools_rs_coco4"):
    src = os.path.join(testdata, "coco", name)
    result = coco_tfrecord.convert(os.path.join(src, "annotations.json"),
                                   os.path.join(src, "images"),
                                   str(tmp_path / name),
                                   strict=True)
    assert result["problems"] == {} and result["images"] > 0


@pytest.mark.parametrize("content, message",
                         [("{not json", "not valid JSON"),
                          ('{"annotations": []}', "no `images` list"),
                          ('{"images": [], "annotations": []}', "no `categories` list")])
def test_a_bad_file_is_an_error_naming_it(tmp_path, content, message):
  path = tmp_path / "bad.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: {re.escape(message)}"):
    coco_tfrecord.convert(str(path), str(tmp_path), str(tmp_path / "o"))
  assert not list(tmp_path.glob("o*"))


# ---------------------------------------------------------------------------------------------
# Property test: whatever the segmentation and box, the converter does not crash, and every
# mask it writes equals pycocotools' decoding of what it kept.

_IMAGE_DIR = tempfile.mkdtemp(prefix="coco_property_images_")


def _image_file(h, w):
  name = f"{h}x{w}.png"
  path = os.path.join(_IMAGE_DIR, name)
  if not os.path.exists(path):
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
  return name


@st.composite
def _coordinate(draw, size):
  """Mostly inside the image; sometimes outside it, far outside, or not finite."""
  kind = draw(st.sampled_from(["inside"] * 6 + ["outside", "integer", "wild"]))
  if kind == "inside":
    return draw(st.floats(0, size, allow_nan=False))
  if kind == "outside":
    return draw(st.floats(-1.5 * size, 2.5 * size, allow_nan=False))
  if kind == "integer":
    return draw(st.integers(-size, 2 * size))
  return draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e12, -1e12]))


@st.composite
def _polygons(draw, h, w):
  polys = []
  for _ in range(draw(st.integers(1, 3))):
    n = draw(st.integers(0, 12))
    polys.append([draw(_coordinate(w if k % 2 == 0 else h)) for k in range(n)])
  return polys


@st.composite
def _random_mask(draw, h, w):
  bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
  return np.asfortranarray(np.array(bits, np.uint8).reshape(h, w))


def _runs(mask):
  flat = mask.flatten(order="F")
  runs, value, n = [], 0, 0
  for b in flat:
    if b == value:
      n += 1
    else:
      runs.append(n)
      value, n = b, 1
  runs.append(n)
  return runs


@st.composite
def _segmentation(draw, h, w):
  kind = draw(st.sampled_from(["polygons", "uncompressed", "compressed", "rle_garbage"]))
  if kind == "polygons":
    return draw(_polygons(h, w))
  size = draw(st.sampled_from([[h, w], [h, w], [h, w], [w, h], [h + 1, w]]))
  if kind == "uncompressed":
    if draw(st.booleans()):
      counts = _runs(draw(_random_mask(h, w)))
    else:
      counts = draw(st.lists(st.integers(-3, h * w + 3), max_size=8))
    return {"size": size, "counts": counts}
  if kind == "compressed":
    return {"size": size, "counts": mask_utils.encode(draw(_random_mask(h, w)))["counts"].decode()}
  return {
      "size": size,
      "counts": draw(st.text(st.characters(min_codepoint=32, max_codepoint=130), max_size=12))
  }


@st.composite
def _annotation(draw, h, w, k):
  x, y = draw(_coordinate(w)), draw(_coordinate(h))
  box = [
      x, y,
      draw(st.one_of(st.floats(0.5, w), st.floats(-3, 2 * w))),
      draw(st.one_of(st.floats(0.5, h), st.floats(-3, 2 * h)))
  ]
  box = [b if math.isfinite(b) else 1.0 for b in box]
  return {
      "id": k + 1, "image_id": 1, "category_id": draw(st.sampled_from([1, 1, 1, 2])),
      "iscrowd": int(draw(st.integers(0, 3)) == 0), "bbox": box,
      "segmentation": draw(_segmentation(h, w))
  }


@st.composite
def _image_with_annotations(draw):
  h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
  anns = [draw(_annotation(h, w, k)) for k in range(draw(st.integers(1, 4)))]
  return h, w, anns


def _pycocotools_mask(seg, h, w):
  """pycocotools' decoding of a segmentation the converter kept (invalid polygons dropped by
  the documented rule)."""
  if isinstance(seg, list):
    polys = [p for p in seg if coco_segmentation.polygon_ok(p, h, w)]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
  if isinstance(seg["counts"], list):
    return mask_utils.decode(mask_utils.frPyObjects(seg, h, w))
  return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_image_with_annotations())
def test_written_masks_equal_pycocotools_decoding(example):
  h, w, anns = example
  image = {"id": 1, "file_name": _image_file(h, w), "height": h, "width": w}
  report, counts = validation.Report(), {"images": 0, "instances": 0, "crowd": 0}
  ex = coco_tfrecord.image_example(image, anns, _IMAGE_DIR, {1: 0}, report, counts)
  skipped = {
      int(m.group(1)) for kind, recs in report.records.items()
      if validation.PROBLEMS[kind].action == "skipped"
      for m in (re.match(r"annotation (\d+)", r) for r in recs) if m
  }
  kept = [a for a in anns if a["id"] not in skipped]
  masks = _masks(ex)
  assert len(masks) == len(kept) == counts["instances"] + counts["crowd"]
  for m, a in zip(masks, kept):
    assert m.shape == (h, w)
    np.testing.assert_array_equal(m, _pycocotools_mask(a["segmentation"], h, w))
    assert a["category_id"] == 1
  boxes = np.stack(
      [_feature(ex, f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")],
      1) if kept else np.zeros((0, 4))
  assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(lambda w: _random_mask(h, w))))
def test_compressed_rle_parser_matches_pycocotools(mask):
  rle = mask_utils.encode(mask)
  runs = coco_segmentation.rle_string_counts(rle["counts"])
  assert runs == _runs(mask)
