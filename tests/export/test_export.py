"""The exported SavedModel: served by a TensorFlow-only process on real photos, equal to the
in-process evaluation, clear errors on bad requests, and exactly three named signatures."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from rethink_tf import config
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.evaluation import coco_evaluator
from rethink_tf.evaluation.evaluator import predict_coco_results
from rethink_tf.inference import build_for_inference, resolve_checkpoint
from rethink_tf.layers.paste_masks import paste_masks
from rethink_tf.serving.detection_server import SIGNATURES
from rethink_tf.serving.export_saved_model import export, next_version

from conftest import REPO_ROOT, TESTDATA, declared_png, served_coco_results

TINY = "gin_configs/testing/tiny.gin"
SCORE_THRESHOLD = 0.05
MAX_DETECTIONS = 100
OUTPUTS = {
    "num_detections": ("int32", []), "detection_boxes": ("float32", [MAX_DETECTIONS, 4]),
    "detection_scores": ("float32", [MAX_DETECTIONS]), "detection_classes":
        ("int64", [MAX_DETECTIONS]), "detection_class_names": ("object", [MAX_DETECTIONS]),
    "image_size": ("int32", [2]), "detection_masks_rle": ("object", [MAX_DETECTIONS]),
    "detection_masks_box_relative": ("float32", [MAX_DETECTIONS, 28, 28])
}
INPUTS = {
    "serving_default": ("images", "DT_UINT8"), "image_bytes": ("image_bytes", "DT_STRING"),
    "tf_example": ("examples", "DT_STRING")
}
# Photos of different sizes: 640x427, 640x480, 640x388, 640x480 and a portrait 375x500.
PHOTOS = [os.path.join(TESTDATA, "coco", "icevision_coco6", "images", "000000128372.jpg")] + \
    sorted(glob.glob(os.path.join(TESTDATA, "coco", "cocotools_rs_coco4", "images", "*.jpg")))


@pytest.fixture(scope="module")
def trained(tiny_reference_run):
  """A model trained by the tiny test config (20 steps from scratch): its run directory."""
  model_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-3000:]
  return str(model_dir)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  """(export root, version directory) of the trained model."""
  config.parse_gin([TINY])
  root = str(tmp_path_factory.mktemp("served"))
  path = export(resolve_checkpoint(trained),
                root,
                max_detections=MAX_DETECTIONS,
                score_threshold=SCORE_THRESHOLD)
  return root, path


def _val_records():
  """The synthetic validation records in the order the evaluator reads them."""
  cfg = InputConfig().prepare()
  files = sorted(glob.glob(cfg.val_pattern))
  return [r.numpy() for r in tf.data.TFRecordDataset(files)], cfg


def _client(script, *args):
  """Runs a client script of tests/export in a fresh process that can import only TensorFlow
  (and under the clients' memory limit); returns the completed process."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  r = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "tests", "export", script), *args],
      cwd=os.path.dirname(args[0]),
      env=env,
      capture_output=True,
      text=True,
      timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  return r


@pytest.fixture(scope="module")
def oversized_images(tmp_path_factory):
  """(a 1.2 MB PNG declaring 20000 x 20000 pixels, a real 8192 x 6144 JPEG = 50.3 MP, just
  over the default budget of 50 MP)."""
  root = tmp_path_factory.mktemp("oversized")
  png, jpeg = root / "declared_20000x20000.png", root / "over_budget_8192x6144.jpg"
  png.write_bytes(declared_png(20000, 20000))
  gray = tf.fill([6144, 8192, 3], tf.constant(128, tf.uint8))
  jpeg.write_bytes(tf.io.encode_jpeg(gray, quality=85).numpy())
  return str(png), str(jpeg)


@pytest.fixture(scope="module")
def client_report(exported, oversized_images):
  """Runs tests/export/serving_client.py in a fresh process that can import only TensorFlow."""
  config.parse_gin([TINY])
  records, cfg = _val_records()
  files = sorted(glob.glob(cfg.val_pattern))
  r = _client("serving_client.py", exported[1], files[0], *oversized_images, *PHOTOS)
  line = [l for l in r.stdout.splitlines() if l.startswith("REPORT ")][-1]
  return json.loads(line[len("REPORT "):])


def _check_outputs(report, batch):
  assert set(report["keys"]) == set(OUTPUTS)
  sizes = report["expected_sizes"]
  for key, (dtype, shape) in OUTPUTS.items():
    assert report["dtypes"][key] == dtype, key
    assert report["shapes"][key] == [batch] + shape, key
  assert report["image_size"] == sizes  # the input images' own sizes, not the model's
  for image in report["per_image"]:
    assert image["boxes_inside"] and image["padding_empty"]
    assert image["mask_pixels_outside_boxes"] == 0
    assert set(image["mask_values"]) <= {0, 1}
    assert set(image["names"]) <= {"circle", "square", "triangle"}
    assert set(image["classes"]) <= {1, 2, 3}
    assert all(s >= SCORE_THRESHOLD for s in image["scores"])
  assert sum(image["n"] for image in report["per_image"]) > 0, "nothing detected: vacuous"
  assert sum(image["mask_pixels"] for image in report["per_image"]) > 0, "no mask pixels"


def test_fresh_process_serves_every_signature_on_real_photos(client_report):
  r = client_report
  assert r["modules"] == []  # nothing of the project, Model Garden or tf_keras was imported
  assert r["signatures"] == sorted(SIGNATURES)
  assert r["category_ids"] == [1, 2, 3]
  assert r["category_names"] == ["circle", "square", "triangle"]
  assert json.loads(r["categories_asset"]) == [{"id": 1,
                                                "name": "circle"}, {"id": 2, "name": "square"},
                                               {"id": 3, "name": "triangle"}]
  _check_outputs(r["image_bytes"], len(PHOTOS))
  assert len({tuple(s) for s in r["image_bytes"]["expected_sizes"]}) >= 3  # different sizes
  for single in r["serving_default"]:
    _check_outputs(single, 1)
  _check_outputs(r["tf_example"], 2)
  # A decoded image and its JPEG bytes give the same detections.
  for i, single in enumerate(r["serving_default"]):
    a, b = single["per_image"][0], r["image_bytes"]["per_image"][i]
    assert a["n"] == b["n"] and a["classes"] == b["classes"]
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)


EXPECTED_ERRORS = {
    "empty_string": r"image_bytes\[1\]: empty string",
    "not_an_image": r"image_bytes\[0\]: not an image \(128 bytes that are not JPEG, PNG",
    "truncated_jpeg": r"image_bytes\[0\]: truncated image: a \d+-byte JPEG/PNG without its end",
    "wrong_dtype": r"expected to be a uint8 tensor but is a float tensor",
    "wrong_rank": r"images must be uint8 \[batch, height, width, 3\], got a tensor of shape "
                  r"\[32 32 3\]",
    "zero_size_image": r"images: zero-size image \(shape \[1 0 32 3\]\)",
    "four_channels": r"images must have 3 channels \(RGB\), got shape \[1 32 32 4\]",
    "empty_batch": r"empty batch: send at least one image",
    "example_without_image": r"examples\[0\]: no image/encoded feature",
    "not_an_example": r"examples\[0\]: not a serialized tf.train.Example with one bytes "
                      r"feature image/encoded \(12 bytes",
    "random_bytes_example": r"examples\[1\]: not a serialized tf.train.Example .*\(300 bytes",
    "example_with_int_image": r"examples\[0\]: not a serialized tf.train.Example with one bytes "
                              r"feature image/encoded",
    "one_byte_file": r"image_bytes\[0\]: not an image \(1 bytes",
    "corrupt_png_idat": r"image_bytes\[1\]: corrupt image: the PNG data after a valid 640 x 427 "
                        r"header does not decode \(\d+ bytes\)",
    "png_declaring_20000x20000": r"image_bytes\[1\]: 20000 x 20000 pixels \(400000000\), over "
                                 r"the limit of 50000000 pixels per image \(export flag "
                                 r"--max_image_pixels\)",
    "jpeg_over_pixel_budget": r"image_bytes\[0\]: 8192 x 6144 pixels \(50331648\), over the "
                              r"limit of 50000000 pixels per image",
    "batch_over_bound": r"image_bytes: a batch of 65 images, over the limit of 64 per request "
                        r"\(export flag --max_batch_size\)",
}


@pytest.mark.parametrize("case", sorted(EXPECTED_ERRORS))
def test_bad_request_names_the_problem(client_report, case):
  error = client_report["errors"][case]
  assert error["raised"] == "InvalidArgumentError", error
  assert re.search(EXPECTED_ERRORS[case], error["full"]), error["full"]
  # Printable text only: never the request's bytes.
  assert all(c.isprintable() or c in "\n\t" for c in error["full"]), error["full"]


def test_model_serves_correctly_after_bad_requests(client_report):
  after, before = client_report["after_errors"], client_report["image_bytes"]
  _check_outputs(after, len(PHOTOS))
  assert after["per_image"] == before["per_image"]


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory):
  """A 4032 x 3024 JPEG (a phone camera's 12 MP photo, 1.5 MB at quality 85): a 640 x 480 COCO
  photo upscaled, with mild sensor-like noise."""
  photo = tf.io.decode_jpeg(open(PHOTOS[1], "rb").read())
  assert photo.shape == (480, 640, 3)
  big = tf.image.resize(photo, [3024, 4032], method="bicubic")
  big += tf.random.stateless_normal(big.shape, [1, 2]) * 4
  path = tmp_path_factory.mktemp("phone") / "phone_4032x3024.jpg"
  path.write_bytes(
      tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(big), 0, 255), tf.uint8),
                        quality=85).numpy())
  return str(path)


def _preprocessing(cfg):
  """The DetectionServer preprocessing dict of an InputConfig (as the exporter builds it)."""
  return dict(short_side=cfg.short_side,
              max_long_side=cfg.max_long_side,
              padded_size=cfg.padded_size,
              pixel_mean=cfg.pixel_mean,
              pixel_std=cfg.pixel_std,
              channel_order=cfg.channel_order)


def _serve_one(export_dir, image, out):
  _client("memory_client.py", export_dir, image, str(out))
  return dict(np.load(out))


def test_phone_photo_costs_its_detections_not_its_canvas(exported, phone_photo, tmp_path):
  """One 12 MP photo through image_bytes in a TensorFlow-only client under a memory limit: peak
  memory within 1.5x of a 640 x 480 photo's, the response under 50 MB, and its RLE masks, decoded,
  equal to every detection's full-image paste (`paste_masks`, thresholded at 0.5)."""
  small = _serve_one(exported[1], PHOTOS[1], tmp_path / "small.npz")
  big = _serve_one(exported[1], phone_photo, tmp_path / "big.npz")
  assert big["image_size"].tolist() == [3024, 4032]
  assert float(big["peak_rss_mb"]) <= 1.5 * float(small["peak_rss_mb"]), (big["peak_rss_mb"],
                                                                          small["peak_rss_mb"])
  assert int(big["response_bytes"]) <= 50 * 2**20, big["response_bytes"]
  assert len(big["boxes"]) > 0, "nothing detected: vacuous"
  h, w = 3024, 4032
  in_mask = 0
  for box, relative, rle in zip(big["boxes"], big["box_relative"], big["masks_rle"]):
    pasted = paste_masks(relative[None], box[None], h, w)[0].numpy() >= 0.5
    served = mask_utils.decode({"size": [h, w], "counts": bytes(rle)})
    np.testing.assert_array_equal(served, pasted)
    in_mask += int(pasted.sum())
  assert in_mask > 0, "every mask empty: vacuous"


def test_full_resolution_masks_on_request_equal_the_rle_masks(trained):
  """Exported with --mask_output=binary, `detection_masks` adds every detection's mask over the
  whole canvas; decoded RLE masks are the same pixels."""
  from rethink_tf.serving.detection_server import DetectionServer
  config.parse_gin([TINY])
  model, cfg = build_for_inference(resolve_checkpoint(trained),
                                   detections_per_image=MAX_DETECTIONS,
                                   score_threshold=SCORE_THRESHOLD)
  pre = _preprocessing(cfg)
  with pytest.raises(ValueError, match="full_resolution_masks must be one of"):
    DetectionServer(model, pre, cfg.category_ids, ["a", "b", "c"], full_resolution_masks="yes")
  server = DetectionServer(model,
                           pre,
                           cfg.category_ids, ["circle", "square", "triangle"],
                           full_resolution_masks="binary")
  photos = [open(p, "rb").read() for p in (PHOTOS[0], PHOTOS[-1])]  # 640x427, 375x500
  out = server.signatures(["image_bytes"])["image_bytes"](image_bytes=tf.constant(photos))
  full = out["detection_masks"].numpy()
  assert full.dtype == np.uint8 and full.shape == (2, MAX_DETECTIONS, 500, 640)
  checked = 0
  for i, (h, w) in enumerate(out["image_size"].numpy()):
    n = int(out["num_detections"][i])
    assert full[i, :, h:].sum() == 0 and full[i, :, :, w:].sum() == 0 and full[i, n:].sum() == 0
    for j in range(n):
      rle = {"size": [int(h), int(w)], "counts": out["detection_masks_rle"][i, j].numpy()}
      np.testing.assert_array_equal(mask_utils.decode(rle), full[i, j, :h, :w])
      checked += int(full[i, j].sum() > 0)
  assert checked > 0, "no non-empty mask compared: vacuous"


@pytest.fixture(scope="module")
def loaded(exported):
  """The export loaded in the test process."""
  return tf.saved_model.load(exported[1])


def test_exported_detections_equal_the_evaluation(trained, loaded):
  config.parse_gin([TINY])
  records, cfg = _val_records()
  assert len(records) == 8  # one batch in both paths
  model, _ = build_for_inference(resolve_checkpoint(trained),
                                 detections_per_image=MAX_DETECTIONS,
                                 score_threshold=SCORE_THRESHOLD)
  evaluated = predict_coco_results(model, cfg, batch_size=8)
  served = served_coco_results(loaded, records)
  assert len(evaluated) > 0 and len(served) == len(evaluated)
  for a, b in zip(served, evaluated):
    assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
    assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)  # both rounded to 1e-3 px
    assert a["segmentation"] == b["segmentation"]  # the same RLE string
  gt = coco_evaluator.load_coco(cfg.val_annotations)
  for iou in ("bbox", "segm"):
    assert coco_evaluator.evaluate(gt, served, iou) == coco_evaluator.evaluate(gt, evaluated, iou)


def test_saved_model_cli_lists_the_three_named_signatures(client_report):
  text = client_report["saved_model_cli"]
  blocks = re.split(r"^signature_def\['([^']+)'\]:$", text, flags=re.M)
  sigs = dict(zip(blocks[1::2], blocks[2::2]))
  # TF writes its reserved `__saved_model_init_op` entry into every TF2 SavedModel; it is not
  # a signature a client can call.
  assert set(sigs) - {"__saved_model_init_op"} == set(SIGNATURES)
  for name, (input_name, dtype) in INPUTS.items():
    inputs_part, outputs_part = sigs[name].split("contains the following output(s):")
    assert re.findall(r"inputs\['([^']+)'\]", inputs_part) == [input_name]
    assert f"dtype: {dtype}" in inputs_part
    assert set(re.findall(r"outputs\['([^']+)'\]", outputs_part)) == set(OUTPUTS)
    assert "Method name is: tensorflow/serving/predict" in sigs[name]


def test_versions_are_never_overwritten(trained, exported):
  root, path = exported
  assert os.path.basename(path) == "1" and next_version(root) == 2
  config.parse_gin([TINY])
  with pytest.raises(FileExistsError, match="never overwrite"):
    export(resolve_checkpoint(trained), root, version=1)
  assert sorted(os.listdir(root)) == ["1"]  # no partial directory left behind
  assert next_version(str(os.path.join(root, "missing"))) == 1


def test_predict_draws_the_detections(exported, loaded, tmp_path):
  from rethink_tf.serving import predict
  assert predict.resolve_version(exported[0]) == exported[1]  # the root -> its highest version
  out, js = tmp_path / "pred.png", tmp_path / "pred.json"
  report = predict.run(loaded, [PHOTOS[0], PHOTOS[-1]], str(out), 0.05, str(js))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads(js.read_text()) == report
  assert [d["image"] for d in report] == [PHOTOS[0], PHOTOS[-1]]
  assert sum(len(d["detections"]) for d in report) > 0
  assert {det["name"] for d in report for det in d["detections"]
         } <= {"circle", "square", "triangle"}
  with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
    predict.resolve_version(str(tmp_path))


def test_box_only_model_with_fixed_batch(tmp_path):
  """A Faster R-CNN (no mask head) serves without mask outputs; --batch_size=N fixes the batch
  dimension of every signature."""
  from rethink_tf.modeling.build import build_model
  from rethink_tf.serving.detection_server import DetectionServer
  config.parse_gin([TINY], ["build_model.mask_on = False"])
  cfg = InputConfig()
  model = build_model(num_classes=cfg.num_classes, image_size=cfg.padded_size)
  model.score_threshold = 0.0  # random weights: keep whatever scores they give
  with pytest.raises(ValueError, match="has no variables yet"):
    DetectionServer(model, {}, cfg.category_ids, ["circle", "square", "triangle"])
  model.detect(tf.zeros([1, *cfg.padded_size, 3]), tf.constant([cfg.padded_size], tf.float32))
  pre = _preprocessing(cfg)
  server = DetectionServer(model,
                           pre,
                           cfg.category_ids, ["circle", "square", "triangle"],
                           batch_size=2)
  fn = server.signatures(["image_bytes"])["image_bytes"]
  assert fn.structured_input_signature[0][0].shape == [2]
  assert fn.structured_outputs["detection_boxes"].shape == [2, model.detections_per_image, 4]
  photos = [open(p, "rb").read() for p in PHOTOS[:2]]
  out = fn(image_bytes=tf.constant(photos))
  assert set(out) == set(OUTPUTS) - {"detection_masks_rle", "detection_masks_box_relative"}
  assert out["image_size"].numpy().tolist() == [[427, 640], [480, 640]]
  n = out["num_detections"].numpy()
  assert n.sum() > 0
  boxes = out["detection_boxes"].numpy()
  assert boxes[0, :n[0], [0, 2]].max() <= 427 and boxes[1, :n[1], [1, 3]].max() <= 640


@pytest.mark.parametrize("height, width", [(1, 20000), (20000, 1), (3, 7000)])
def test_extreme_aspect_ratios_are_served(loaded, height, width):
  """Panorama strips and line scans are legal images: the short side resizes to at least one
  pixel (not to 0, which the resize op refuses), and the answer is in the image's pixels."""
  out = loaded.signatures["image_bytes"](image_bytes=tf.constant([declared_png(width, height)]))
  assert tuple(out["image_size"].numpy()[0]) == (height, width)
  n = int(out["num_detections"].numpy()[0])
  assert 0 <= n <= MAX_DETECTIONS
  boxes = out["detection_boxes"].numpy()[0, :n]
  assert np.all(boxes[:, [0, 2]] <= height + 1e-3) and np.all(boxes[:, [1, 3]] <= width + 1e-3)


def test_a_one_pixel_high_tensor_is_served(loaded):
  out = loaded.signatures["serving_default"](images=tf.zeros([1, 1, 9000, 3], tf.uint8))
  assert tuple(out["image_size"].numpy()[0]) == (1, 9000)
  assert 0 <= int(out["num_detections"].numpy()[0]) <= MAX_DETECTIONS
