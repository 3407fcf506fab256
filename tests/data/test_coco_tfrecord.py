"""COCO -> TFRecord: every image and annotation accounted for, masks equal annToMask."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from odd_records import expected_pixels
from official.vision.dataloaders import tf_example_decoder
from PIL import Image

from rethink_tf.data import coco_tfrecord
from rethink_tf.evaluation.coco_evaluator import load_coco


def _records(prefix):
  files = sorted(tf.io.gfile.glob(prefix + "-*.tfrecord"))
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


@pytest.mark.parametrize("name", ["icevision_coco6", "cocotools_rs_coco4"])
def test_converter_accounts_for_everything(testdata, tmp_path, name):
  ann = os.path.join(testdata, "coco", name, "annotations.json")
  data = json.load(open(ann))
  counts = coco_tfrecord.convert(ann,
                                 os.path.join(testdata, "coco", name, "images"),
                                 str(tmp_path / "out"),
                                 num_shards=3)
  n_crowd = sum(a.get("iscrowd", 0) for a in data["annotations"])
  assert counts["images"] == len(data["images"])
  assert counts["instances"] + counts["crowd"] == len(data["annotations"])
  assert counts["crowd"] == n_crowd
  assert counts["problems"] == {}
  assert not list(tmp_path.glob("*.tmp"))

  coco = load_coco(ann)
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  records = _records(str(tmp_path / "out"))
  assert len(records) == len(data["images"])
  seen_ids, n_masks = set(), 0
  for rec in records:
    d = decoder.decode(tf.constant(rec))
    image_id = int(d["source_id"].numpy())
    seen_ids.add(image_id)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    info = coco.imgs[image_id]
    assert d["image"].shape == (info["height"], info["width"], 3)
    masks = d["groundtruth_instance_masks"].numpy()
    assert masks.shape[0] == len(anns)
    np.testing.assert_array_equal(d["groundtruth_classes"].numpy(),
                                  [a["category_id"] for a in anns])
    np.testing.assert_array_equal(d["groundtruth_is_crowd"].numpy(),
                                  [bool(a.get("iscrowd", 0)) for a in anns])
    for m, a in zip(masks, anns):
      np.testing.assert_array_equal(m.astype(np.uint8), coco.annToMask(a))
      n_masks += 1
    boxes = d["groundtruth_boxes"].numpy()
    for b, a in zip(boxes, anns):
      x, y, w, h = a["bbox"]
      np.testing.assert_allclose(b * np.array([info["height"], info["width"]] * 2),
                                 [y, x, y + h, x + w],
                                 atol=1e-3)
  assert seen_ids == {im["id"] for im in data["images"]}
  assert n_masks == len(data["annotations"])


def _variant_dataset(testdata, tmp_path):
  """icevision's first image saved as grayscale JPEG, CMYK JPEG, RGBA, palette and 16-bit PNG,
  GIF, BMP and WebP, a 64-bit id, and one image without annotations."""
  src = os.path.join(testdata, "coco", "icevision_coco6")
  data = json.load(open(os.path.join(src, "annotations.json")))
  first = data["images"][0]
  img = Image.open(os.path.join(src, "images", first["file_name"]))
  out_dir = tmp_path / "images"
  out_dir.mkdir()
  images, anns = [], []
  big = 2**40 + 7
  variants = [("gray.jpg", img.convert("L"), "JPEG"), ("cmyk.jpg", img.convert("CMYK"), "JPEG"),
              ("rgba.png", img.convert("RGBA"), "PNG"), ("empty.jpg", img, "JPEG"),
              ("palette.png", img.convert("P"), "PNG"), ("gif.gif", img, "GIF"),
              ("bmp.bmp", img, "BMP"), ("webp.webp", img, "WEBP"),
              ("gray16.png", Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257),
               "PNG")]
  first_anns = [a for a in data["annotations"] if a["image_id"] == first["id"]]
  for k, (name, im, fmt) in enumerate(variants):
    im.save(out_dir / name, format=fmt)
    image_id = big + k
    images.append({**first, "id": image_id, "file_name": name})
    if name != "empty.jpg":
      for j, a in enumerate(first_anns):
        anns.append({**a, "id": big * 10 + k * 100 + j, "image_id": image_id})
  ann_path = tmp_path / "ann.json"
  ann_path.write_text(json.dumps({**data, "images": images, "annotations": anns}))
  return str(ann_path), str(out_dir), images, len(first_anns)


def test_grayscale_cmyk_png_64bit_ids_and_empty_images(testdata, tmp_path):
  ann, image_dir, images, per_image = _variant_dataset(testdata, tmp_path)
  counts = coco_tfrecord.convert(ann, image_dir, str(tmp_path / "v"), num_shards=1)
  assert counts["images"] == 9 and not counts["problems"], counts["problems"]
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  got = {}
  for rec in _records(str(tmp_path / "v")):
    d = decoder.decode(tf.constant(rec))
    got[int(d["source_id"].numpy())] = d
  assert set(got) == {im["id"] for im in images}
  for im in images:
    d = got[im["id"]]
    assert d["image"].shape == (im["height"], im["width"], 3)
    n = 0 if im["file_name"] == "empty.jpg" else per_image
    assert d["groundtruth_classes"].shape[0] == n
    decoded = d["image"].numpy().astype(np.float32)
    # Pillow's RGB, except a 16-bit image's top byte (Pillow clips its values to 255).
    source = expected_pixels(open(os.path.join(image_dir, im["file_name"]), "rb").read())
    if im["file_name"].endswith(".png"):  # kept as they are, lossless: exact
      np.testing.assert_array_equal(decoded, source)
    else:  # JPEG decoders differ by a level or two; re-encoded ones pass one more JPEG
      tolerance = 2.0 if im["file_name"] in ("gray.jpg", "empty.jpg") else 5.0
      assert np.abs(decoded - source).mean() < tolerance, im["file_name"]


def test_subset_is_deterministic_and_sized():
  ids = list(range(1000, 1100))
  a = coco_tfrecord.select_subset(ids, 10, seed=3)
  assert a == coco_tfrecord.select_subset(list(reversed(ids)), 10, seed=3)
  assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(ids)
  assert a != coco_tfrecord.select_subset(ids, 10, seed=4)
  assert coco_tfrecord.select_subset(ids, None, 0) == ids


def test_subset_flag_writes_k_images(testdata, tmp_path):
  name = "icevision_coco6"
  ann = os.path.join(testdata, "coco", name, "annotations.json")
  counts = coco_tfrecord.convert(ann,
                                 os.path.join(testdata, "coco", name, "images"),
                                 str(tmp_path / "s"),
                                 subset_size=2,
                                 subset_seed=1)
  assert counts["images"] == 2 and len(_records(str(tmp_path / "s"))) == 2


def test_size_mismatch_is_skipped_or_under_strict_an_error_naming_the_file(testdata, tmp_path):
  src = os.path.join(testdata, "coco", "icevision_coco6")
  data = json.load(open(os.path.join(src, "annotations.json")))
  data["images"][0]["height"] += 1
  ann = tmp_path / "bad.json"
  ann.write_text(json.dumps(data))
  counts = coco_tfrecord.convert(str(ann), os.path.join(src, "images"), str(tmp_path / "a"))
  assert counts["images"] == len(data["images"]) - 1
  assert counts["problems"] == {"size_mismatch": 1}
  with pytest.raises(coco_tfrecord.ConversionError, match=data["images"][0]["file_name"]):
    coco_tfrecord.convert(str(ann), os.path.join(src, "images"), str(tmp_path / "b"), strict=True)
  assert not list(tmp_path.glob("b-*"))  # nothing partial under the final name
