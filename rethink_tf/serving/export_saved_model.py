r"""Exports a trained detector as a SavedModel for TF Serving or `tf.saved_model.load`.

  python -m export.export_saved_model --gin_file=F --checkpoint=C --export_dir=D \
      [--batch_size=N|dynamic] [--max_detections=100] [--score_threshold=0.05] \
      [--mask_output=rle|binary|probability] [--label_map=FILE] [--version=N] \
      [--max_image_pixels=50000000] [--max_batch_size=64] [--max_request_bytes=268435456] \
      [--fixed_canvas]

Writes D/<version>/ (TF Serving's layout: the highest integer version is served), by default
one more than the highest version already in D. The export is written under a temporary name
and renamed when complete, so a server watching D never loads half a model, and an existing
version is never overwritten. Signatures and outputs: rethink_tf/serving/detection_server.py
and docs/serving.md.
`--checkpoint` is a prefix or a run directory (its latest checkpoint). Category names come from
--label_map (a COCO JSON or {"id": "name"}), else the categories.json beside a converted
detector's checkpoint, else the data config (synthetic shapes, the validation JSON when present,
COCO's 80 names).
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Optional

from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import (
    config,  # noqa: E402
    console,  # noqa: E402
)
from rethink_tf.data import categories, synthetic  # noqa: E402
from rethink_tf.inference import build_for_inference, resolve_checkpoint  # noqa: E402
from rethink_tf.serving.detection_server import SIGNATURES, DetectionServer  # noqa: E402
from rethink_tf.serving.request_checks import RequestLimits  # noqa: E402

FLAGS = flags.FLAGS


def next_version(export_dir: str) -> int:
  """One more than the highest integer-named version directory (1 for a new directory)."""
  versions = [
      int(d) for d in (os.listdir(export_dir) if os.path.isdir(export_dir) else []) if d.isdigit()
  ]
  return max(versions, default=0) + 1


def export(checkpoint: str,
           export_dir: str,
           batch_size=None,
           max_detections: int = 100,
           score_threshold: float = 0.05,
           mask_output: str = "rle",
           label_map=None,
           version=None,
           limits: Optional[RequestLimits] = None,
           fixed_canvas: bool = False) -> str:
  """Exports the gin-configured model restored from `checkpoint`; returns the version dir.

  Gin must already be parsed (the training run's files). `limits`: what one request may ask
  (default `RequestLimits()`). `fixed_canvas`: every image padded to `InputConfig.padded_size`
  (one static shape, for TPU serving and XLA) instead of each request's tightest canvas.
  """
  limits = limits or RequestLimits()
  model, cfg = build_for_inference(checkpoint,
                                   detections_per_image=max_detections,
                                   score_threshold=score_threshold)
  known = None
  if cfg.synthetic is not None:
    known = {c["id"]: c["name"] for c in synthetic.CATEGORIES}
  # A converted detector names its classes beside its checkpoint.
  label_map = label_map or categories.checkpoint_categories(checkpoint)
  names, missing = categories.category_names(cfg.category_ids, label_map, cfg.val_annotations,
                                             known)
  if missing:
    logging.warning(f"warning: no names for category ids {missing}; their names are the ids (pass "
                    "--label_map)")
  version = int(version) if version is not None else next_version(export_dir)
  final = os.path.join(export_dir, str(version))
  if os.path.exists(final):
    raise FileExistsError(f"{final} exists; exports never overwrite a version (pick another "
                          "--version or leave it unset for the next one)")
  os.makedirs(export_dir, exist_ok=True)
  preprocessing = dict(short_side=cfg.short_side,
                       max_long_side=cfg.max_long_side,
                       padded_size=list(cfg.padded_size),
                       pixel_mean=list(cfg.pixel_mean),
                       pixel_std=list(cfg.pixel_std),
                       channel_order=cfg.channel_order,
                       jpeg_dct_method=cfg.jpeg_dct_method,
                       resize_antialias=cfg.resize_antialias,
                       resize_method=cfg.resize_method,
                       size_divisibility=cfg.size_divisibility)
  with tempfile.TemporaryDirectory() as scratch:
    cat_path = os.path.join(scratch, "categories.json")
    with open(cat_path, "w") as f:
      json.dump([{"id": int(i), "name": n} for i, n in zip(cfg.category_ids, names)], f, indent=1)
    info_path = os.path.join(scratch, "export_info.json")
    with open(info_path, "w") as f:
      json.dump(
          {
              "checkpoint":
                  checkpoint, "signatures":
                      list(SIGNATURES), "batch_size":
                          batch_size or "dynamic", "max_detections":
                              max_detections, "score_threshold":
                                  score_threshold, "nms_threshold":
                                      model.nms_threshold,
              "detection_masks_rle":
                  "COCO compressed RLE counts, mask = pasted probability >= 0.5",
              "detection_masks": {
                  "rle": None, "binary": "uint8 {0, 1} (probability >= 0.5)",
                  "probability": "float32 probability"
              }[mask_output], "limits":
                  dataclasses.asdict(limits), "mask_resolution":
                      (2 * model.roi_heads.poolers["mask"][0]
                       if model.roi_heads.branch("mask") is not None else None), "preprocessing":
                           preprocessing,
              "canvas": (f"fixed {cfg.padded_size[0]}x{cfg.padded_size[1]}" if fixed_canvas else
                         f"fit: each request padded to its largest resized image, rounded up "
                         f"to {cfg.size_divisibility}")
          },
          f,
          indent=1)
    config_path = os.path.join(scratch, "operative_config.gin")
    with open(config_path, "w") as f:
      f.write(gin.config_str())
    server = DetectionServer(model,
                             preprocessing,
                             cfg.category_ids,
                             names,
                             full_resolution_masks=None if mask_output == "rle" else mask_output,
                             batch_size=batch_size,
                             limits=limits,
                             fixed_canvas=fixed_canvas,
                             assets={
                                 "categories_file": cat_path, "export_info_file": info_path,
                                 "gin_config_file": config_path
                             })
    partial = os.path.join(export_dir, f".partial-{version}-{os.getpid()}")
    try:
      tf.saved_model.save(server, partial, signatures=server.signatures())
      os.rename(partial, final)
    finally:
      shutil.rmtree(partial, ignore_errors=True)
  return final


def main(argv):
  console.show_library_logs()
  del argv
  config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  if FLAGS.batch_size == "dynamic":
    batch = None
  elif FLAGS.batch_size.isdigit() and int(FLAGS.batch_size) > 0:
    batch = int(FLAGS.batch_size)
  else:
    sys.exit(f"--batch_size must be a positive integer or 'dynamic', got {FLAGS.batch_size!r}")
  try:
    limits = RequestLimits(FLAGS.max_image_pixels, FLAGS.max_batch_size, FLAGS.max_request_bytes)
    checkpoint = resolve_checkpoint(FLAGS.checkpoint)
    path = export(checkpoint, FLAGS.export_dir, batch, FLAGS.max_detections, FLAGS.score_threshold,
                  FLAGS.mask_output, FLAGS.label_map, FLAGS.version, limits, FLAGS.fixed_canvas)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    sys.exit(f"export failed: {e}")
  print(f"exported {checkpoint} -> {path} (signatures: {', '.join(SIGNATURES)})")


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-export`)."""
  flags.DEFINE_multi_string("gin_file", [], "Gin files of the training run (repeatable).")
  flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings.")
  flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or run directory.", required=True)
  flags.DEFINE_string("export_dir",
                      None, "Versioned export root (TF Serving's model base "
                      "path).",
                      required=True)
  flags.DEFINE_string("batch_size", "dynamic", "Fixed batch size of every signature, or "
                      "'dynamic'.")
  flags.DEFINE_integer("max_detections", 100, "Detections per image (D).")
  flags.DEFINE_float("score_threshold", 0.05, "Minimum detection score.")
  flags.DEFINE_enum(
      "mask_output", "rle", ["rle", "binary", "probability"],
      "Masks as COCO RLE strings and box-relative probabilities (rle), or also "
      "full-resolution detection_masks: uint8 {0, 1} (binary) or float32 (probability), "
      "which cost max_detections x height x width per image.")
  flags.DEFINE_string("label_map", None, "Category names: a COCO JSON or {\"id\": \"name\"}.")
  flags.DEFINE_integer("version", None, "Version directory name (default: next integer).")
  defaults = RequestLimits()
  flags.DEFINE_integer(
      "max_image_pixels", defaults.max_image_pixels,
      "Largest height x width a request's image may have (read from the "
      "encoded header, refused before decoding).")
  flags.DEFINE_integer("max_batch_size", defaults.max_batch_size, "Most images per request.")
  flags.DEFINE_integer(
      "max_request_bytes", defaults.max_request_bytes,
      "Most bytes per request (encoded images or serialized examples; uint8 "
      "pixels for serving_default).")
  flags.DEFINE_bool(
      "fixed_canvas", False, "Pad every image to InputConfig.padded_size (one static shape, "
      "for TPU serving and XLA); default: each request is padded only to its largest resized "
      "image rounded up to InputConfig.size_divisibility, as evaluation and detectron2 pad.")
  app.run(main)


if __name__ == "__main__":
  console_main()
