"""A detectron2 Mask R-CNN, trained by detectron2, converted: the same tensors stage by stage,
the same detections, the same COCO AP, served by the exported SavedModel; the same weights in
Detectron's blob names convert to the same checkpoint; bad files are one-line errors.

Reference: tests/testdata/d2_ref (README.md there): detectron2's own weights, config,
intermediate tensors on 4 validation images and COCO AP on the 200 synthetic validation images.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml
from pycocotools import mask as mask_utils

from rethink_tf import config
from rethink_tf.checkpoint import (
    convert_detector,
    detector_configs,
    detector_import,
    detector_specs,
)
from rethink_tf.data import synthetic
from rethink_tf.layers.box_ops import pairwise_iou
from rethink_tf.layers.roi_align import assign_levels
from rethink_tf.modeling import postprocess

from conftest import REPO_ROOT, TESTDATA, served_coco_results

D2 = os.path.join(TESTDATA, "d2_ref")
PKL, CONFIG = os.path.join(D2, "model_final.pkl"), os.path.join(D2, "config.yaml")
NUM_IMAGES = 4
RTOL = 1e-4  # of the tensor's max |value|


def _xyxy_to_yxyx(b):
  return np.asarray(b, np.float32)[..., [1, 0, 3, 2]]


def _close(ours, ref, what):
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  assert err <= RTOL, f"{what}: max |difference| / max |detectron2| = {err:.2e}"
  return err


@pytest.fixture(scope="module")
def categories_json(tmp_path_factory):
  path = tmp_path_factory.mktemp("cats") / "instances.json"
  path.write_text(json.dumps({"categories": synthetic.CATEGORIES, "images": [], "annotations": []}))
  return str(path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, categories_json):
  out = str(tmp_path_factory.mktemp("converted") / "d2_shapes")
  convert_detector.convert("detectron2", PKL, out, CONFIG, categories_json)
  return out


@pytest.fixture(scope="module")
def stages():
  return np.load(os.path.join(D2, "stages_subset.npz"))


@pytest.fixture(scope="module")
def model(converted):
  from rethink_tf.inference import build_for_inference, resolve_checkpoint
  config.parse_gin([os.path.join(converted, "model.gin")])
  model, _ = build_for_inference(resolve_checkpoint(converted))
  return model


def test_conversion_writes_checkpoint_gin_and_categories(converted):
  assert sorted(os.listdir(converted)) == [
      "categories.json", "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index", "model.gin"
  ]
  cats = json.load(open(os.path.join(converted, "categories.json")))["categories"]
  assert [(c["id"], c["name"], c["contiguous_id"]) for c in cats] == [(1, "circle", 1),
                                                                      (2, "square", 2),
                                                                      (3, "triangle", 3)]
  gin_text = open(os.path.join(converted, "model.gin")).read()
  for binding in ("build_model.anchor_offset = 0.0", "build_model.aspect_ratios = (2.0, 1.0, 0.5)",
                  "build_model.roi_align_aligned = True", "build_model.block_counts = (1, 1, 1, 1)",
                  "InputConfig.channel_order = 'BGR'",
                  "InputConfig.pixel_std = (57.375, 57.12, 58.395)",
                  "InputConfig.jpeg_dct_method = 'INTEGER_ACCURATE'",
                  "build_model.detections_per_image = 50"):
    assert binding in gin_text, binding


def test_stages_equal_detectron2(model, stages):
  """Features, RPN outputs, the box head on detectron2's proposals and the mask head on its
  boxes, image by image."""
  worst = {}
  for k in range(NUM_IMAGES):
    p = f"img{k}"
    feats = model.features(tf.constant(stages[f"{p}/images"].transpose(0, 2, 3, 1)), False)
    scores, deltas = model.rpn_head(feats)
    for level in range(2, 7):
      ref = stages[f"{p}/p{level}"].transpose(0, 2, 3, 1)
      worst[f"p{level}"] = _close(feats[level].numpy(), ref, f"{p} P{level}")
      ref = stages[f"{p}/rpn/objectness_logits_p{level}"].transpose(0, 2, 3, 1).reshape(1, -1)
      worst[f"rpn logits p{level}"] = _close(scores[level].numpy(), ref, f"{p} RPN logits")
      d = stages[f"{p}/rpn/anchor_deltas_p{level}"]  # [1, A*4, H, W]
      n, a4, h, w = d.shape
      d = d.reshape(n, a4 // 4, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(1, -1, 4)
      worst[f"rpn deltas p{level}"] = _close(deltas[level].numpy(), d[..., [1, 0, 3, 2]],
                                             f"{p} RPN deltas")
    proposals = tf.constant(_xyxy_to_yxyx(stages[f"{p}/proposals/boxes"])[None])
    pooled = model.roi_heads.pool_rois(feats, proposals, "box", training=False)
    logits, box_deltas = model.roi_heads.box_predictor(
        model.roi_heads.box_head(pooled, training=False))
    ref = stages[f"{p}/box_head/class_logits"]  # background last
    worst["class logits"] = _close(logits.numpy()[0], np.roll(ref, 1, axis=1), f"{p} logits")
    ref = stages[f"{p}/box_head/box_deltas"].reshape(-1, 3, 4)[..., [1, 0, 3, 2]]
    worst["box deltas"] = _close(box_deltas.numpy()[0, :, 1:], ref, f"{p} box deltas")
    boxes = tf.constant(_xyxy_to_yxyx(stages[f"{p}/detections/boxes"])[None])
    mask_logits = model.roi_heads.branch("mask")(model.roi_heads.pool_rois(feats,
                                                                           boxes,
                                                                           "mask",
                                                                           training=False),
                                                 training=False).numpy()[0]
    ref = stages[f"{p}/mask_head/mask_logits"].transpose(0, 2, 3, 1)
    worst["mask logits"] = _close(mask_logits[..., 1:], ref, f"{p} mask logits")
  print("stage maxima (relative):", {k: f"{v:.1e}" for k, v in worst.items()})


def test_proposals_equal_detectron2(model, stages):
  for k in range(NUM_IMAGES):
    p = f"img{k}"
    feats = model.features(tf.constant(stages[f"{p}/images"].transpose(0, 2, 3, 1)), False)
    _, _, props, valid = model.proposals(feats, tf.constant([[128.0, 128.0]]), False)
    ours = props.numpy()[0][valid.numpy()[0]]
    ref = _xyxy_to_yxyx(stages[f"{p}/proposals/boxes"])
    iou = pairwise_iou(tf.constant(ref[None]), tf.constant(ours[None])).numpy()[0]
    matched = (iou.max(axis=1) >= 0.999).mean()
    assert matched >= 0.99 and len(ours) == len(ref), (p, matched, len(ours), len(ref))


def test_detections_and_pasted_masks_equal_detectron2(model, stages):
  total = matched = 0
  for k in range(NUM_IMAGES):
    p = f"img{k}"
    det = model.detect(tf.constant(stages[f"{p}/images"].transpose(0, 2, 3, 1)),
                       tf.constant([[128.0, 128.0]]))
    n = int(det["num_detections"][0])
    boxes, rles = postprocess.to_input_image(det["boxes"][0], det["masks"][0], n, tf.constant(1.0),
                                             tf.constant([128, 128]))
    # The RLE strings the evaluator and the SavedModel return, decoded by pycocotools.
    boxes = boxes.numpy()[:n]
    masks = np.zeros((n, 128, 128), np.uint8)
    for j, counts in enumerate(rles.numpy()[:n]):
      masks[j] = mask_utils.decode({"size": [128, 128], "counts": counts})
    scores, classes = det["scores"].numpy()[0, :n], det["classes"].numpy()[0, :n] - 1
    ref_boxes = _xyxy_to_yxyx(stages[f"{p}/final/boxes"])
    ref_scores, ref_classes = stages[f"{p}/final/scores"], stages[f"{p}/final/classes"]
    ref_masks = stages[f"{p}/final/masks"]
    iou = pairwise_iou(tf.constant(ref_boxes[None]), tf.constant(boxes[None])).numpy()[0]
    free = set(range(n))
    for i in range(len(ref_boxes)):
      total += 1
      ok = [
          j for j in free
          if classes[j] == ref_classes[i] and iou[i, j] >= 0.99 and abs(scores[j] -
                                                                        ref_scores[i]) <= 1e-3
      ]
      if not ok:
        continue
      j = max(ok, key=lambda j: iou[i, j])
      free.discard(j)
      matched += 1
      inter = np.logical_and(masks[j], ref_masks[i]).sum()
      union = np.logical_or(masks[j], ref_masks[i]).sum()
      assert inter / max(union, 1) >= 0.98, (p, i, inter / max(union, 1))
  assert total > 40 and matched / total >= 0.99, (matched, total)


def test_level_assignment_follows_detectron2_above_p2(stages):
  """detectron2's rule, floor(4 + log2(sqrt(area) / 224 + 1e-8)) clamped to P2-P5, on boxes
  at every level boundary (the 128 px fixture pools almost everything from P2)."""
  sides = np.array(
      [8, 55.9, 56, 56.1, 111.9, 112, 112.1, 223.9, 224, 224.1, 447.9, 448, 448.1, 900, 1300],
      np.float32)
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
  ratio = np.sqrt(sides * sides) / np.float32(224.0) + np.float32(1e-8)
  expected = np.clip(np.floor(4 + np.log2(ratio)), 2, 5).astype(np.int32)
  assert sorted(set(expected.tolist())) == [2, 3, 4, 5]
  got = assign_levels(tf.constant(boxes), 2, 5, log_epsilon=1e-8).numpy()
  np.testing.assert_array_equal(got, expected)
  for k in range(NUM_IMAGES):  # and detectron2's own levels of the fixture's proposals
    proposals = _xyxy_to_yxyx(stages[f"img{k}/proposals/boxes"])
    got = assign_levels(tf.constant(proposals), 2, 5, log_epsilon=1e-8).numpy()
    np.testing.assert_array_equal(got, stages[f"img{k}/proposals/pooler_level"])


def test_evaluate_gives_detectron2_detections_and_ap(converted, tmp_path):
  """`rethink_tf.evaluate --gin_file=DIR/model.gin --gin_file=<data gin> --checkpoint=DIR`
  over the 200 synthetic validation images: detectron2's detections (predictions_val.json,
  one to one) and its box and mask AP."""
  from pycocotools import mask as mask_utils
  results = tmp_path / "detections.json"
  r = subprocess.run([
      sys.executable, "-m", "rethink_tf.evaluate", f"--gin_file={converted}/model.gin",
      "--gin_file=gin_configs/data/synthetic.gin", f"--checkpoint={converted}",
      f"--results_file={results}"
  ],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  metrics = json.loads(r.stdout.strip().splitlines()[-1])
  reference = json.load(open(os.path.join(D2, "eval.json")))["coco_stats_12"]
  for iou in ("bbox", "segm"):
    assert abs(metrics[iou]["AP"] - reference[iou]["AP"]) <= 0.002, (iou, metrics[iou]["AP"])
  print("AP (ours, detectron2):",
        {iou: (metrics[iou]["AP"], reference[iou]["AP"]) for iou in ("bbox", "segm")})
  ours = json.load(open(results))
  theirs = json.load(open(os.path.join(D2, "predictions_val.json")))
  by_image = {}
  for d in theirs:
    by_image.setdefault(d["image_id"], []).append(d)
  assert len(by_image) > 150 and len(ours) == len(theirs) > 3000
  matched, mask_ious = 0, []
  for d in ours:
    free = by_image.get(d["image_id"], [])
    box_diff = [
        np.abs(np.subtract(t["bbox"], d["bbox"])).max()
        if t["category_id"] == d["category_id"] else np.inf for t in free
    ]
    if not box_diff or min(box_diff) > 0.01:
      continue
    t = free.pop(int(np.argmin(box_diff)))
    if abs(t["score"] - d["score"]) <= 1e-4:
      matched += 1
      mask_ious.append(float(mask_utils.iou([d["segmentation"]], [t["segmentation"]], [0])[0, 0]))
  assert matched / len(theirs) >= 0.99, (matched, len(theirs))
  assert min(mask_ious) >= 0.98, min(mask_ious)
  print(f"detections matched one to one: {matched} of {len(theirs)}; mask IoU min "
        f"{min(mask_ious):.4f}, mean {np.mean(mask_ious):.4f}")


def test_exported_converted_model_serves_the_evaluated_detections(converted, tmp_path):
  """`export.export_saved_model --gin_file=DIR/model.gin --checkpoint=DIR`, then the
  SavedModel's tf_example signature on one batch of validation records against the
  evaluation of the same images."""
  import glob

  from rethink_tf.data.input_pipeline import InputConfig
  from rethink_tf.evaluation.evaluator import predict_coco_results
  from rethink_tf.inference import build_for_inference, resolve_checkpoint
  root = str(tmp_path / "exported")
  r = subprocess.run([
      sys.executable, "-m", "export.export_saved_model", f"--gin_file={converted}/model.gin",
      f"--checkpoint={converted}", f"--export_dir={root}", "--max_detections=50"
  ],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  loaded = tf.saved_model.load(os.path.join(root, "1"))
  assert [n.decode() for n in loaded.category_names.numpy()] == ["circle", "square", "triangle"]
  config.parse_gin([f"{converted}/model.gin", "gin_configs/data/synthetic.gin"])
  cfg = InputConfig().prepare(training=False)
  files = sorted(glob.glob(cfg.val_pattern))
  records = [x.numpy() for x in tf.data.TFRecordDataset(files).take(8)]
  model, _ = build_for_inference(resolve_checkpoint(converted))
  evaluated = predict_coco_results(model, cfg, batch_size=8, max_images=8)
  served = served_coco_results(loaded, records)
  assert len(evaluated) > 20 and len(served) == len(evaluated)
  for a, b in zip(served, evaluated):
    assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
    assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
    assert a["segmentation"] == b["segmentation"]


# ---------------------------------------------------------------------------------------------
# Detectron's blob names.


def _detectron_blobs(d2):
  """The fixture's weights renamed to Detectron's blobs (the table in detector_import):
  background first in cls_score, background rows/channels of zeros in bbox_pred and
  mask_fcn_logits, and the momentum blobs a Detectron training pkl carries."""
  blobs = {}

  def put(name, value):
    blobs[name] = value
    blobs[name + "_momentum"] = np.zeros_like(value)  # optimizer state: ignored

  def conv_gn(src, dst, gn=None):
    put(f"{dst}_w", d2[f"{src}.weight"])
    put(f"{gn or dst + '_gn'}_s", d2[f"{src}.norm.weight"])
    put(f"{gn or dst + '_gn'}_b", d2[f"{src}.norm.bias"])

  conv_gn("backbone.bottom_up.stem.conv1", "conv1")
  for s in (2, 3, 4, 5):
    base = f"backbone.bottom_up.res{s}.0"
    for part, branch in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"),
                         ("shortcut", "branch1")):
      conv_gn(f"{base}.{part}", f"res{s}_0_{branch}")
    blob = f"res{s}_0_sum"
    conv_gn(f"backbone.fpn_lateral{s}", f"fpn_inner_{blob}" + ("" if s == 5 else "_lateral"))
    conv_gn(f"backbone.fpn_output{s}", f"fpn_{blob}")
  for src, dst in (("conv", "conv_rpn_fpn2"), ("objectness_logits", "rpn_cls_logits_fpn2"),
                   ("anchor_deltas", "rpn_bbox_pred_fpn2")):
    put(f"{dst}_w", d2[f"proposal_generator.rpn_head.{src}.weight"])
    put(f"{dst}_b", d2[f"proposal_generator.rpn_head.{src}.bias"])
  for i in (1, 2):
    conv_gn(f"roi_heads.box_head.conv{i}", f"head_conv{i}")
    conv_gn(f"roi_heads.mask_head.mask_fcn{i}", f"_mask_fcn{i}")
  put("fc6_w", d2["roi_heads.box_head.fc1.weight"])
  put("fc6_b", d2["roi_heads.box_head.fc1.bias"])
  for suffix, key in (("w", "weight"), ("b", "bias")):
    score = d2[f"roi_heads.box_predictor.cls_score.{key}"]
    put(f"cls_score_{suffix}", np.roll(score, 1, axis=0))
    box = d2[f"roi_heads.box_predictor.bbox_pred.{key}"]
    put(f"bbox_pred_{suffix}", np.concatenate([np.zeros_like(box[:4]), box]))
    put(f"conv5_mask_{suffix}", d2[f"roi_heads.mask_head.deconv.{key}"])
    logits = d2[f"roi_heads.mask_head.predictor.{key}"]
    put(f"mask_fcn_logits_{suffix}", np.concatenate([np.zeros_like(logits[:1]), logits]))
  return blobs


def test_detectron_blob_names_convert_to_the_same_checkpoint(converted, categories_json, tmp_path):
  d2 = detector_import.read_weights(PKL)
  path = str(tmp_path / "model_final.pkl")
  with open(path, "wb") as f:
    pickle.dump({"blobs": _detectron_blobs(d2)}, f)
  out = str(tmp_path / "detectron")
  convert_detector.convert("detectron", path, out, None, categories_json)
  ours = tf.train.load_checkpoint(tf.train.latest_checkpoint(out))
  ref = tf.train.load_checkpoint(tf.train.latest_checkpoint(converted))
  names = [
      n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(converted))
      if n.startswith("model/")
  ]
  assert sorted(names) == sorted(
      n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(out))
      if n.startswith("model/"))
  assert len(names) > 100
  for name in names:
    np.testing.assert_array_equal(ours.get_tensor(name), ref.get_tensor(name), err_msg=name)
  gin_text = open(os.path.join(out, "model.gin")).read()
  for binding in ("build_model.box_plus_one = True", "build_model.roi_align_aligned = False",
                  "InputConfig.pixel_mean = (102.9801, 115.9465, 122.7717)"):
    assert binding in gin_text, binding


# ---------------------------------------------------------------------------------------------
# Bad files.


def _write_pkl(path, tensors):
  with open(path, "wb") as f:
    pickle.dump({"model": tensors, "__author__": "test"}, f)
  return str(path)


class _RunsCode:

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _bad_inputs(tmp_path):
  """(name, weights path, config path, expected fragments of the one-line error)."""
  d2 = detector_import.read_weights(PKL)
  cfg = yaml.safe_load(open(CONFIG))
  cases = []
  missing = dict(d2)
  del missing["roi_heads.mask_head.deconv.weight"]
  cases.append(
      ("missing", _write_pkl(tmp_path / "missing.pkl",
                             missing), CONFIG, ["missing", "roi_heads.mask_head.deconv.weight"]))
  extra = {**d2, "roi_heads.box_head.fc2.weight": np.zeros([256, 256], np.float32)}
  cases.append(
      ("extra", _write_pkl(tmp_path / "extra.pkl",
                           extra), CONFIG, ["match no variable", "roi_heads.box_head.fc2.weight"]))
  shape = {**d2, "roi_heads.box_head.conv2.weight": np.zeros([64, 32, 3, 3], np.float32)}
  cases.append(("shape", _write_pkl(tmp_path / "shape.pkl", shape), CONFIG,
                ["roi_heads.box_head.conv2.weight", "(3, 3, 32, 64)", "(3, 3, 64, 64)"]))
  for name, key, value in (("head", ("ROI_BOX_HEAD", "NAME"), "FastRCNNFCHeadWithDropout"),
                           ("norm", ("RESNETS", "NORM"), "LayerNorm")):
    bad = json.loads(json.dumps(cfg))
    bad["MODEL"][key[0]][key[1]] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bad))
    cases.append((name, PKL, str(path), [f"MODEL.{key[0]}.{key[1]}", value]))
  data = open(PKL, "rb").read()
  (tmp_path / "truncated.pkl").write_bytes(data[:len(data) // 2])
  cases.append(("truncated", str(tmp_path / "truncated.pkl"), CONFIG, ["truncated"]))
  evil = _RunsCode()
  evil.marker = str(tmp_path / "code_ran")
  (tmp_path / "code.pkl").write_bytes(pickle.dumps({"model": evil}))
  cases.append(("code", str(tmp_path / "code.pkl"), CONFIG, ["refusing to load", "system"]))
  return cases


def test_bad_files_are_one_line_errors_and_write_nothing(tmp_path, categories_json):
  for name, weights, cfg, fragments in _bad_inputs(tmp_path):
    out = tmp_path / f"out_{name}"
    with pytest.raises((convert_detector.ConversionError, detector_configs.SpecError,
                        detector_import.ImportError_)) as e:
      convert_detector.convert("detectron2", weights, str(out), cfg, categories_json)
    text = str(e.value)
    assert "\n" not in text, (name, text)
    file_named = weights if name not in ("head", "norm") else cfg
    assert file_named in text, (name, text)
    for fragment in fragments:
      assert fragment in text, (name, fragment, text)
    assert not out.exists(), name
    assert not list(tmp_path.glob(f"out_{name}.partial*")), name
  assert not (tmp_path / "code_ran").exists()  # the pickle's code never ran


def test_cli_exits_1_with_one_line_and_no_traceback(tmp_path, categories_json):
  cases = {name: (w, c) for name, w, c, _ in _bad_inputs(tmp_path)}
  for name in ("shape",):  # the in-process test covers every kind; the CLI reports them alike
    weights, cfg = cases[name]
    out = tmp_path / f"cli_{name}"
    r = subprocess.run([
        sys.executable, "-m", "rethink_tf.checkpoint.convert_detector", "--format=detectron2",
        f"--input={weights}", f"--config={cfg}", f"--categories={categories_json}",
        f"--output={out}"
    ],
                       cwd=REPO_ROOT,
                       capture_output=True,
                       text=True,
                       timeout=300)
    assert r.returncode == 1, (name, r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and weights in lines[0], (name, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, name
    assert not out.exists()


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
  path = tmp_path / "model_final.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, installed or not
  with pytest.raises(detector_import.ImportError_, match="reading .pth needs torch"):
    detector_import.read_weights(str(path))


def test_config_without_num_blocks_derives_them_from_depth(tmp_path):
  """Model-zoo configs give DEPTH (and _BASE_ files); the fixture's gives NUM_BLOCKS_PER_STAGE."""
  base = tmp_path / "Base.yaml"
  base.write_text(yaml.safe_dump({"MODEL": {"RESNETS": {"DEPTH": 101, "NORM": "GN"}}}))
  child = tmp_path / "child.yaml"
  child.write_text("_BASE_: Base.yaml\nINPUT:\n  MIN_SIZE_TRAIN: (640, 672)\n")
  cfg = detector_configs.read_config(str(child), "detectron2")
  assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 101 and cfg["MODEL"]["RESNETS"]["NORM"] == "GN"
  assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == (640, 672)
  assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 80  # detectron2's default


# ---------------------------------------------------------------------------------------------
# Cascade stages, keypoint head and conversion without a config.


def _conv2d(x, w, pad):
  """torch Conv2d (cross-correlation, stride 1): x [C, H, W], w [O, C, k, k] -> [O, H', W']."""
  k = w.shape[-1]
  x = np.pad(x, [(0, 0), (pad, pad), (pad, pad)])
  h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
  out = np.zeros([w.shape[0], h, wd])
  for dy in range(k):
    for dx in range(k):
      out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], x[:, dy:dy + h, dx:dx + wd])
  return out


def _conv_transpose2d(x, w, stride, pad):
  """torch ConvTranspose2d: x [C, H, W], w [C, O, k, k] -> [O, (H-1)s - 2p + k, ...]."""
  c, h, wd = x.shape
  k = w.shape[-1]
  full = np.zeros([w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k])
  for y in range(h):
    for xx in range(wd):
      full[:, y * stride:y * stride + k,
           xx * stride:xx * stride + k] += np.einsum("c,cokl->okl", x[:, y, xx], w)
  return full[:, pad:full.shape[1] - pad, pad:full.shape[2] - pad]


def _upsample2x(x):
  """torch interpolate(scale 2, bilinear, align_corners=False) of [C, H, W]."""

  def axis(n):
    src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, src - lo

  (ylo, yhi, fy), (xlo, xhi, fx) = axis(x.shape[1]), axis(x.shape[2])
  rows = x[:, ylo] * (1 - fy)[None, :, None] + x[:, yhi] * fy[None, :, None]
  return rows[:, :, xlo] * (1 - fx) + rows[:, :, xhi] * fx


def test_cascade_and_keypoint_heads_convert_by_detectron2_names(tmp_path, categories_json):
  """detectron2's CascadeROIHeads (`box_head.{k}`, `box_predictor.{k}`, class-agnostic) and
  KRCNNConvDeconvUpsampleHead (`conv_fcn{k}`, `score_lowres`, no norm): the converted stage
  predictors equal the source tensors, and the keypoint head computes what detectron2's
  layers compute (numpy reference of torch's conv, transposed conv and upsampling)."""
  rng = np.random.default_rng(0)
  d2 = detector_import.read_weights(PKL)
  tensors = {
      k: v
      for k, v in d2.items()
      if not k.startswith(("roi_heads.box_head.", "roi_heads.box_predictor."))
  }
  for k in range(3):
    for name, value in d2.items():
      if name.startswith("roi_heads.box_head."):
        tensors[name.replace("box_head.", f"box_head.{k}.")] = value + k
    tensors[f"roi_heads.box_predictor.{k}.cls_score.weight"] = rng.normal(size=(4, 256)) * .01
    tensors[f"roi_heads.box_predictor.{k}.cls_score.bias"] = rng.normal(size=4)
    tensors[f"roi_heads.box_predictor.{k}.bbox_pred.weight"] = rng.normal(size=(4, 256)) * .01
    tensors[f"roi_heads.box_predictor.{k}.bbox_pred.bias"] = rng.normal(size=4)
  kp = {
      "conv_fcn1.weight": (16, 64, 3, 3), "conv_fcn1.bias": (16,
                                                            ), "conv_fcn2.weight": (16, 16, 3, 3),
      "conv_fcn2.bias": (16,), "score_lowres.weight": (16, 4, 4, 4), "score_lowres.bias": (4,)
  }
  for name, shape in kp.items():
    tensors[f"roi_heads.keypoint_head.{name}"] = (rng.normal(size=shape) * 0.1).astype(np.float32)
  tensors = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  cfg = yaml.safe_load(open(CONFIG))
  cfg["MODEL"]["ROI_HEADS"]["NAME"] = "CascadeROIHeads"
  cfg["MODEL"]["KEYPOINT_ON"] = True
  cfg["MODEL"]["ROI_KEYPOINT_HEAD"].update(CONV_DIMS=[16, 16],
                                           NUM_KEYPOINTS=4,
                                           POOLER_SAMPLING_RATIO=2)
  (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
  out = str(tmp_path / "cascade_keypoints")
  _, _, model = convert_detector.convert("detectron2", _write_pkl(tmp_path / "m.pkl", tensors), out,
                                         str(tmp_path / "config.yaml"), categories_json)
  assert model.roi_heads.num_stages == 3 and bool(model.roi_heads.cascade_active.numpy())
  stage3 = model.roi_heads.cascade_box_predictors[1]
  src = tensors["roi_heads.box_predictor.2.bbox_pred.weight"]
  np.testing.assert_array_equal(stage3.bbox_pred.kernel.numpy(), src.T[:, [1, 0, 3, 2]])
  src = tensors["roi_heads.box_predictor.2.cls_score.bias"]
  np.testing.assert_array_equal(stage3.cls_score.bias.numpy(), np.roll(src, 1))
  np.testing.assert_array_equal(model.roi_heads.cascade_box_heads[1].fcs[0].bias.numpy(),
                                d2["roi_heads.box_head.fc1.bias"] + 2)
  x = rng.normal(size=(64, 14, 14)).astype(np.float32)
  ours = model.roi_heads.branch("keypoint")(tf.constant(x.transpose(1, 2, 0)[None, None]),
                                            training=False).numpy()[0, 0]  # [K, 56, 56]
  t = lambda n: tensors[f"roi_heads.keypoint_head.{n}"]
  h = np.maximum(_conv2d(x, t("conv_fcn1.weight"), 1) + t("conv_fcn1.bias")[:, None, None], 0)
  h = np.maximum(_conv2d(h, t("conv_fcn2.weight"), 1) + t("conv_fcn2.bias")[:, None, None], 0)
  h = _conv_transpose2d(h, t("score_lowres.weight"), 2, 1) + t("score_lowres.bias")[:, None, None]
  ref = _upsample2x(h)
  assert ours.shape == ref.shape == (4, 56, 56)
  np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


def test_conversion_without_config_reads_the_architecture_from_the_weights():
  """No --config: the weights give the same architecture as the run's config.yaml (the test
  sizes and anchors then are detectron2's COCO defaults)."""
  tensors = detector_import.read_weights(PKL)
  with_config = detector_specs.detectron2_spec(detector_configs.read_config(CONFIG, "detectron2"),
                                               tensors, CONFIG)
  without = detector_specs.detectron2_spec(detector_configs.default_config("detectron2", tensors),
                                           tensors, PKL)
  architecture = ("norm", "fpn_norm", "head_norm", "block_counts", "groups", "width_per_group",
                  "width_multiplier", "fpn_channels", "box_head_type", "box_head_num_conv",
                  "head_conv_dim", "head_fc_dim", "mask_on", "mask_head_num_conv",
                  "mask_head_conv_dim", "stride_in_1x1")
  assert {k: without.model[k] for k in architecture
         } == {k: with_config.model[k] for k in architecture}
  assert without.num_classes == with_config.num_classes == 3
  assert without.model["anchor_size"] == 8.0 and without.model["box_sampling_ratio"] == 0
  assert without.inputs["pixel_std"] == (1.0, 1.0, 1.0) and without.inputs["short_side"] == 800
