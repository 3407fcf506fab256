"""Runs the detector over the validation split and scores it with pycocotools (host side)."""

import json
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from rethink_tf import run_files
from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.evaluation import coco_evaluator
from rethink_tf.evaluation.tta import TestTimeAugmentation, detect_tta
from rethink_tf.modeling import postprocess

# Boxes to input-image pixels and masks to RLE strings, compiled (one trace per batch shape):
# eagerly, the per-detection loop would dispatch every op of every mask from Python.
_to_input_images = tf.function(postprocess.batch_to_input_images, autograph=False)


def to_original_images(det: Dict[str, np.ndarray], scales, orig_hws):
  """A batch's detections in original-image pixels, by the exported SavedModel's rule
  (`postprocess.to_input_image`).

  Returns (boxes_yxyx [B, D, 4], mask RLE strings [B, D] or None) as numpy.
  """
  masks = det.get("masks")
  boxes, rles = _to_input_images(det["boxes"], masks, det["num_detections"],
                                 tf.constant(scales, tf.float32),
                                 tf.constant(np.asarray(orig_hws), tf.int32))
  return boxes.numpy(), None if rles is None else rles.numpy()


def detect_function(model, any_canvas: bool = False):
  """`model.detect` as one tf.function per model, created on first use and then reused.

  Training evaluates every few thousand steps; a new tf.function per evaluation retraced and
  re-optimized the whole detector each time (about 10 s of a 20 s evaluation of 4 images at
  R50-FPN 512 px on 2 CPU cores). `any_canvas`: traced once for batches of any size and canvas
  (`eval_canvas = "fit"`: COCO's photos give dozens of canvases, each a trace otherwise);
  else traced per input shape (one, for a fixed canvas).
  """
  key = "_detect_function_any_canvas" if any_canvas else "_detect_function"
  fn = model.__dict__.get(key)
  if fn is None:
    # No autograph: the detector has no tensor-dependent Python control flow (the trainer's
    # step is traced the same way), and converting it recursively costs seconds per trace.
    signature = [tf.TensorSpec([None, None, None, 3]),
                 tf.TensorSpec([None, 2])] if any_canvas else None
    fn = tf.function(model.detect, autograph=False, input_signature=signature)
    # Not a Keras-tracked attribute (checkpoints and exports stay as they are); the cycle
    # model -> function -> model is freed with the model.
    object.__setattr__(model, key, fn)
  return fn


def _validation_dataset(model, cfg: InputConfig, batch_size: int) -> tf.data.Dataset:
  """The validation batches, built once per model and input settings and re-iterated at every
  evaluation: building the dataset traces its decode and resize functions again (about 1 s of
  an 8-image evaluation at 512 px)."""
  key = (cfg.val_pattern, batch_size, cfg.short_side, cfg.max_long_side, tuple(cfg.padded_size),
         tuple(cfg.pixel_mean), tuple(cfg.pixel_std), cfg.channel_order, cfg.jpeg_dct_method,
         cfg.resize_antialias, cfg.resize_method, cfg.eval_canvas, cfg.size_divisibility,
         tuple(sorted(tf.io.gfile.glob(cfg.val_pattern))))
  cache = model.__dict__.get("_validation_datasets")
  if cache is None:
    cache = {}
    object.__setattr__(model, "_validation_datasets", cache)  # untracked, as detect_function
  if key not in cache:
    cache[key] = make_dataset(cfg, False, batch_size, model.anchor_kwargs)
  return cache[key]


def _batches(model, cfg: InputConfig, batch_size: int, tta: Optional[TestTimeAugmentation]):
  """Yields (detections as numpy, the base-scale batch, per-image (y, x) scale [B, 2] of the
  detections' frame). With `tta`, the same images at every test scale are zipped into one step
  and the detections are already in input-image pixels (scale 1)."""
  if tta is None:
    detect = detect_function(model, any_canvas=cfg.eval_canvas == "fit")
    for batch in _validation_dataset(model, cfg, batch_size):
      det = detect(batch["images"], batch["image_size"])
      yield {k: v.numpy() for k, v in det.items()}, batch, batch["scale"].numpy()
    return
  configs = tta.input_configs(cfg, 2**model.feature_levels[-1])
  augmentations = tta.augmentations(len(configs))
  datasets = [
      make_dataset(c, False, batch_size, model.anchor_kwargs, group_canvases=False) for c in configs
  ]
  for batches in tf.data.Dataset.zip(tuple(datasets)):
    ids = [b["source_id"].numpy().tolist() for b in batches]
    if any(i != ids[0] for i in ids):  # the scales read the same files in the same order
      raise RuntimeError(f"test-time augmentation: the scales' batches differ ({ids})")
    det = detect_tta(model, batches, augmentations)
    ones = np.ones([len(ids[0]), 2], np.float32)
    yield {k: v.numpy() for k, v in det.items()}, batches[0], ones


def predict_coco_results(model,
                         cfg: InputConfig,
                         batch_size: int = 8,
                         max_images: Optional[int] = None,
                         tta: Optional[TestTimeAugmentation] = None,
                         total_images: Optional[int] = None,
                         progress_seconds: Optional[float] = 30.0) -> List[dict]:
  """COCO-format results (boxes, RLE masks, keypoints) for every validation image; `tta`
  evaluates with test-time augmentation. Every `progress_seconds` (None: never) it prints the
  images done, images/s and, with `total_images`, the time left: a 5,000-image COCO
  evaluation on a CPU runs for hours."""
  results, seen = [], 0
  progress = EvalProgress(total_images, progress_seconds)
  category_ids = np.asarray(cfg.category_ids)
  for det, batch, det_scale in _batches(model, cfg, batch_size, tta):
    orig_hws = batch["orig_size"].numpy()
    all_boxes, all_rles = to_original_images(det, det_scale, orig_hws)
    for i in range(det["scores"].shape[0]):
      n = int(det["num_detections"][i])
      cats = category_ids[det["classes"][i, :n] - 1]
      keypoints = None
      if "keypoints" in det:  # detection frame -> original pixels; the score stays
        scale_y, scale_x = (float(v) for v in det_scale[i])
        keypoints = det["keypoints"][i, :n] / np.array([scale_x, scale_y, 1.0])
      results += coco_evaluator.detections_to_coco(
          int(batch["source_id"][i]),
          all_boxes[i, :n],
          det["scores"][i, :n],
          cats,
          keypoints=keypoints,
          mask_rles=None if all_rles is None else all_rles[i, :n],
          image_hw=orig_hws[i])
      seen += 1
    progress.update(seen)
    if max_images and seen >= max_images:
      break
  progress.update(seen, final=True)
  return results


class EvalProgress:
  """Prints `evaluation: N/T images, R images/s, ETA M min` at most every `every` seconds
  (and once at the end when it printed before): `time.monotonic`, the first batch included."""

  def __init__(self, total: Optional[int], every: Optional[float]):
    self.total, self.every = total, every
    self.start = self.last = time.monotonic()
    self.printed = False

  def update(self, done: int, final: bool = False):
    now = time.monotonic()
    if self.every is None or (not final and now - self.last < self.every) or (final and
                                                                              not self.printed):
      return
    self.last, self.printed = now, True
    rate = done / max(now - self.start, 1e-9)
    line = f"evaluation: {done}" + (f"/{self.total}" if self.total else "") + " images"
    line += f", {rate:.2f} images/s"
    if self.total and not final:
      line += f", ETA {_minutes(max(self.total - done, 0) / max(rate, 1e-9))}"
    elif final:
      line += f", done in {_minutes(now - self.start)}"
    logging.info(line)


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_evaluation(model,
                   cfg: InputConfig,
                   batch_size: int = 8,
                   tta: Optional[TestTimeAugmentation] = None,
                   results_path: Optional[str] = None) -> Dict[str, Dict[str, float]]:
  """{"bbox": {12 stats}, "segm": {12 stats}, "keypoints": {10 stats}} on the validation
  split ("segm" only for models with a mask head, "keypoints" for models with a keypoint head,
  OKS with `InputConfig.keypoint_oks_sigmas` or COCO's for its 17 person keypoints).
  `tta`: with test-time augmentation (`evaluation/tta.py`). `results_path`: the detections
  are also written there, in COCO's results format (a JSON list, as detectron2's
  `coco_instances_results.json`)."""
  if not cfg.val_annotations:
    raise ValueError("evaluation needs InputConfig.val_annotations (the COCO JSON of the "
                     "validation split)")
  gt = coco_evaluator.load_coco(cfg.val_annotations)
  results = predict_coco_results(model, cfg, batch_size, tta=tta, total_images=len(gt.getImgIds()))
  if results_path:
    run_files.write_text(results_path, json.dumps(results))
  iou_types = ("bbox", "segm") if model.roi_heads.branch("mask") is not None else ("bbox",)
  metrics = {iou: coco_evaluator.evaluate(gt, results, iou) for iou in iou_types}
  if model.roi_heads.branch("keypoint") is not None:
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    metrics["keypoints"] = coco_evaluator.evaluate(gt,
                                                   boxes_only,
                                                   "keypoints",
                                                   kpt_oks_sigmas=cfg.keypoint_oks_sigmas or None)
  return metrics


def format_metrics(metrics: Dict[str, Dict[str, float]]) -> str:
  """'box AP 0.601 (AP50 0.850) | mask AP 0.567 (AP50 0.840)'; masks and keypoints only when
  evaluated."""
  names = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
  return " | ".join(
      f"{names[k]} AP {v['AP']:.3f} (AP50 {v['AP50']:.3f})" for k, v in metrics.items())


def final_summary(metrics: Dict[str, Dict[str, float]]) -> str:
  """'box AP 0.586, mask AP 0.589' of the metrics evaluated."""
  names = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
  return ", ".join(f"{names[k]} AP {metrics[k]['AP']:.3f}" for k in names if k in metrics)
