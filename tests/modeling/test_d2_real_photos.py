"""The converted detectron2 fixture on real COCO photos of several shapes: detectron2's padded
input size for every photo, its input tensor and P2-P6, its detections and masks, through
evaluation and through the exported SavedModel; a larger canvas changes them.

Reference: tests/testdata/d2_ref/real_photos (README.md there): detectron2's own outputs of the
d2_ref model on 10 COCO val2017 photos at test sizes 128/128 and 256/427.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from rethink_tf import config
from rethink_tf.checkpoint import convert_detector
from rethink_tf.data import synthetic
from rethink_tf.data.image_preprocessing import decode_image, resize_for_model
from rethink_tf.data.input_pipeline import make_dataset
from rethink_tf.evaluation.evaluator import predict_coco_results
from rethink_tf.inference import build_for_inference, resolve_checkpoint

from conftest import TESTDATA

D2 = os.path.join(TESTDATA, "d2_ref")
PHOTOS = os.path.join(D2, "real_photos")
SIZES = {"128": (128, 128), "256": (256, 427)}
STAGED = (194216, 480985)  # a landscape and a portrait photo, size 256
RTOL = 1e-4  # of each tensor's largest |value|


def _photo_id(file_name: str) -> int:
  return int(file_name.split(".")[0])


def _reference(size: str):
  with open(os.path.join(PHOTOS, f"detections_{size}.json")) as f:
    return {_photo_id(r["file_name"]): r for r in json.load(f)}


def _feature(kind, values):
  if kind == "bytes":
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The converted checkpoint and a TFRecord of the 10 photos (no annotations)."""
  root = tmp_path_factory.mktemp("real_photos")
  cats = root / "categories.json"
  cats.write_text(json.dumps({"categories": synthetic.CATEGORIES, "images": [], "annotations": []}))
  out = str(root / "d2_shapes")
  convert_detector.convert("detectron2", os.path.join(D2, "model_final.pkl"), out,
                           os.path.join(D2, "config.yaml"), str(cats))
  records = str(root / "photos.tfrecord")
  with tf.io.TFRecordWriter(records) as writer:
    for r in _reference("256").values():
      with open(os.path.join(PHOTOS, "images", r["file_name"]), "rb") as f:
        encoded = f.read()
      feature = {
          "image/encoded": _feature("bytes", [encoded]),
          "image/format": _feature("bytes", [b"jpeg"]),
          "image/source_id": _feature("bytes", [str(_photo_id(r["file_name"])).encode()]),
          "image/filename": _feature("bytes", [r["file_name"].encode()]),
          "image/height": _feature("int", [r["orig_h"]]),
          "image/width": _feature("int", [r["orig_w"]]),
      }
      writer.write(
          tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  return out, records


def _model(converted, size: str, *params):
  """The converted model at a detectron2 test size; `params`: more gin bindings."""
  checkpoint, records = converted
  short, long = SIZES[size]
  config.parse_gin([os.path.join(checkpoint, "model.gin")], [
      f"InputConfig.short_side = {short}", f"InputConfig.max_long_side = {long}",
      f"InputConfig.padded_size = ({-(-long // 32) * 32}, {-(-long // 32) * 32})",
      f"InputConfig.val_pattern = '{records}'", *params
  ])
  return build_for_inference(resolve_checkpoint(checkpoint))


def _matches(results, reference):
  """Greedy one-to-one matching of detectron2's detections to ours: same class, box IoU >=
  0.99, |score difference| <= 1e-3. Returns (matched, total, mask IoUs of the matches)."""
  matched, total, mask_ious = 0, 0, []
  for image_id, r in reference.items():
    ours = [d for d in results if d["image_id"] == image_id]
    used = set()
    total += r["num_detections"]
    for j in range(r["num_detections"]):
      x0, y0, x1, y1 = r["boxes"][j]
      theirs = [[x0, y0, x1 - x0, y1 - y0]]
      for q, d in enumerate(ours):
        if q in used or d["category_id"] != r["classes"][j] + 1:
          continue
        iou = mask_utils.iou([d["bbox"]], theirs, [0])[0, 0]
        if iou >= 0.99 and abs(d["score"] - r["scores"][j]) <= 1e-3:
          used.add(q)
          matched += 1
          mask_ious.append(
              float(mask_utils.iou([d["segmentation"]], [r["masks_rle"][j]], [0])[0, 0]))
          break
  return matched, total, mask_ious


@pytest.mark.parametrize("size", sorted(SIZES))
def test_evaluation_pads_as_detectron2_and_gives_its_detections(converted, size):
  model, cfg = _model(converted, size)
  reference = _reference(size)
  seen = {}
  for batch in make_dataset(cfg, False, 8, model.anchor_kwargs):
    for k, image_id in enumerate(batch["source_id"].numpy()):
      seen[int(image_id)] = (tuple(batch["images"].shape[1:3]),
                             tuple(int(v) for v in batch["image_size"][k].numpy()))
  assert seen == {
      i: ((r["padded_h"], r["padded_w"]), (r["resized_h"], r["resized_w"]))
      for i, r in reference.items()
  }
  results = predict_coco_results(model, cfg, batch_size=8)
  matched, total, mask_ious = _matches(results, reference)
  print(f"size {size}: {matched} of {total} detections matched; mask IoU min {min(mask_ious):.5f}")
  assert matched >= 0.99 * total
  assert min(mask_ious) >= 0.98


def test_resized_image_input_and_fpn_levels_equal_detectron2(converted):
  model, cfg = _model(converted, "256")
  images = {}
  for batch in make_dataset(cfg, False, 1, model.anchor_kwargs):
    images[int(batch["source_id"][0])] = batch
  for image_id in STAGED:
    ref = np.load(os.path.join(PHOTOS, f"stages_{image_id:012d}.npz"))
    with open(os.path.join(PHOTOS, "images", f"{image_id:012d}.jpg"), "rb") as f:
      decoded = decode_image(f.read(), cfg.jpeg_dct_method)
    resized, _, _ = resize_for_model(decoded, 256, 427, cfg.padded_size, method="pil")
    # detectron2's uint8 BGR image after PIL's resize, bit for bit.
    np.testing.assert_array_equal(resized.numpy().astype(np.uint8)[..., ::-1],
                                  ref["resized_bgr_uint8"])
    batch = images[image_id]
    ours = batch["images"].numpy()
    theirs = ref["input"].transpose(0, 2, 3, 1)  # NCHW BGR -> NHWC, our channel order is BGR
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= RTOL * np.abs(theirs).max()
    feats = model.features(batch["images"], False)
    for level in range(2, 7):
      p = ref[f"p{level}"].transpose(0, 2, 3, 1)
      assert feats[level].shape == p.shape, level
      err = np.abs(feats[level].numpy() - p).max() / np.abs(p).max()
      assert err <= RTOL, (image_id, level, err)


def test_a_square_canvas_changes_features_and_detections(converted):
  """The same images on the square canvas sized for the largest image (448 x 448): GroupNorm
  sees the padding, so P2 and the detections move far beyond the tolerance above."""
  model, cfg = _model(converted, "256", "InputConfig.eval_canvas = 'fixed'")
  for batch in make_dataset(cfg, False, 1, model.anchor_kwargs):
    if int(batch["source_id"][0]) == STAGED[0]:
      break
  assert tuple(batch["images"].shape[1:3]) == (448, 448)
  ref = np.load(os.path.join(PHOTOS, f"stages_{STAGED[0]:012d}.npz"))
  p2 = ref["p2"].transpose(0, 2, 3, 1)
  ours = model.features(batch["images"], False)[2].numpy()[:, :p2.shape[1], :p2.shape[2]]
  assert np.abs(ours - p2).max() / np.abs(p2).max() > 100 * RTOL
  matched, total, _ = _matches(predict_coco_results(model, cfg, batch_size=8), _reference("256"))
  print(f"square canvas: {matched} of {total} detections matched")
  assert matched < 0.5 * total


def test_exported_model_serves_detectron2_detections(converted, tmp_path):
  """The SavedModel pads each request to detectron2's canvas: one photo per request through
  image_bytes gives detectron2's detections (256/427)."""
  from rethink_tf.serving import export_saved_model
  model_dir, _ = converted
  _model(converted, "256")
  path = export_saved_model.export(resolve_checkpoint(model_dir),
                                   str(tmp_path / "exported"),
                                   max_detections=50)
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures["image_bytes"]
  reference = _reference("256")
  results = []
  for image_id, r in reference.items():
    with open(os.path.join(PHOTOS, "images", r["file_name"]), "rb") as f:
      out = serve(image_bytes=tf.constant([f.read()]))
    n = int(out["num_detections"][0])
    for j in range(n):
      y0, x0, y1, x1 = (float(v) for v in out["detection_boxes"][0, j])
      h, w = (int(v) for v in out["image_size"][0])
      results.append({
          "image_id": image_id, "category_id": int(out["detection_classes"][0, j]),
          "bbox": [x0, y0, x1 - x0,
                   y1 - y0], "score": float(out["detection_scores"][0, j]), "segmentation": {
                       "size": [h, w], "counts": out["detection_masks_rle"][0, j].numpy().decode()
                   }
      })
  matched, total, mask_ious = _matches(results, reference)
  print(f"served: {matched} of {total} detections matched; mask IoU min {min(mask_ious):.5f}")
  assert matched >= 0.99 * total
  assert min(mask_ious) >= 0.98
