"""A serving client that has only TensorFlow: loads an exported detector, runs every signature
on real photos and on bad requests, lists the export with `saved_model_cli show --all`, and
prints one JSON report for the test to check.

  python serving_client.py EXPORT_DIR TFRECORD LARGE_PNG LARGE_JPEG IMAGE [IMAGE ...]

LARGE_PNG and LARGE_JPEG are files over the export's pixel budget, sent among the bad requests.
The project's packages (and Model Garden, tf_keras) are blocked from importing, so the run fails
if the SavedModel needed any of them, and the process runs under a memory limit
(`limit_memory`), so a request that allocates far more than it should fails instead of swapping.
"""

import importlib.abc
import json
import resource
import sys

BLOCKED = ("rethink_tf", "export", "official", "tf_keras")
# The client's data segment limit (heap and anonymous mappings: what TensorFlow allocates). The
# tiny model's client peaks near 1.1 GB; full-resolution masks of one 12 MP photo alone took 6 GB.
MEMORY_LIMIT_MB = 3072


def limit_memory(mb: int = MEMORY_LIMIT_MB):
  """Caps this process's data segment: an allocation beyond it fails (MemoryError, a TF
  ResourceExhaustedError or an abort), never swaps."""
  resource.setrlimit(resource.RLIMIT_DATA, (mb * 2**20, mb * 2**20))


def peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM) in MB."""
  with open("/proc/self/status") as f:
    line = next(l for l in f if l.startswith("VmHWM:"))
  return int(line.split()[1]) / 1024


class _Block(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} must not be needed to serve the SavedModel")
    return None


sys.meta_path.insert(0, _Block())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def rle_decode(counts: bytes, h: int, w: int) -> np.ndarray:
  """COCO compressed RLE -> uint8 [h, w], with pycocotools (what COCO clients use; not this
  project)."""
  from pycocotools import mask as mask_utils
  return mask_utils.decode({"size": [h, w], "counts": counts})


def describe(outputs, image_sizes):
  """Keys, dtypes, shapes and per-image checks of one signature's outputs."""
  out = {k: v.numpy() for k, v in outputs.items()}
  report = {
      "keys": sorted(out), "dtypes": {k: v.dtype.name for k, v in out.items()},
      "shapes": {k: list(v.shape) for k, v in out.items()},
      "num_detections": out["num_detections"].tolist(), "image_size": out["image_size"].tolist(),
      "expected_sizes": image_sizes
  }
  per_image = []
  for i, (h, w) in enumerate(image_sizes):
    n = int(out["num_detections"][i])
    masks = np.stack([rle_decode(c, h, w) for c in out["detection_masks_rle"][i, :n]] or
                     [np.zeros((h, w), np.uint8)])[:n]
    boxes = out["detection_boxes"][i, :n]
    # A mask is 0 outside its box widened by one pixel (the paste window).
    outside = 0
    for mask, (y0, x0, y1, x1) in zip(masks, boxes):
      window = np.zeros_like(mask)
      window[max(int(np.floor(y0)) - 1, 0):int(np.ceil(y1)) + 1,
             max(int(np.floor(x0)) - 1, 0):int(np.ceil(x1)) + 1] = 1
      outside += int((mask * (1 - window)).sum())
    per_image.append({
        "n":
            n,
        "boxes_inside":
            bool(
                np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= h) and
                np.all(boxes[:, [1, 3]] <= w)),
        "mask_pixels_outside_boxes":
            outside,
        "mask_pixels":
            int(masks.sum()),
        "mask_values":
            sorted(np.unique(masks).tolist()),
        "padding_empty":
            bool(
                np.all(out["detection_scores"][i, n:] == 0) and
                np.all(out["detection_classes"][i, n:] == 0) and
                np.all(out["detection_masks_rle"][i, n:] == b"")),
        "classes":
            out["detection_classes"][i, :n].tolist(),
        "names": [s.decode() for s in out["detection_class_names"][i, :n]],
        "scores":
            out["detection_scores"][i, :n].tolist(),
        "boxes":
            boxes.tolist(),
        "masks_rle": [c.decode() for c in out["detection_masks_rle"][i, :n]],
    })
  report["per_image"] = per_image
  return report


def main(export_dir, record_path, large_png, large_jpeg, image_paths):
  limit_memory()
  model = tf.saved_model.load(export_dir)
  sigs = model.signatures
  encoded = [open(p, "rb").read() for p in image_paths]
  decoded = [tf.io.decode_image(b, channels=3, expand_animations=False) for b in encoded]
  sizes = [list(d.shape[:2]) for d in decoded]
  report = {
      "signatures": sorted(sigs.keys()),
      "categories_asset": open(model.categories_file.asset_path.numpy().decode()).read(),
      "category_ids": model.category_ids.numpy().tolist(),
      "category_names": [s.decode() for s in model.category_names.numpy()]
  }
  # All photos in one image_bytes request (different sizes share one mask canvas).
  report["image_bytes"] = describe(sigs["image_bytes"](image_bytes=tf.constant(encoded)), sizes)
  # serving_default takes a dense batch: one request per photo.
  report["serving_default"] = [
      describe(sigs["serving_default"](images=d[None]), [s]) for d, s in zip(decoded, sizes)
  ]
  records = [r.numpy() for r in tf.data.TFRecordDataset(record_path).take(2)]
  feats = [
      tf.io.parse_single_example(
          r, {
              "image/height": tf.io.FixedLenFeature([], tf.int64),
              "image/width": tf.io.FixedLenFeature([], tf.int64)
          }) for r in records
  ]
  rec_sizes = [[int(f["image/height"]), int(f["image/width"])] for f in feats]
  report["tf_example"] = describe(sigs["tf_example"](examples=tf.constant(records)), rec_sizes)

  # Bad requests: each must raise InvalidArgumentError; the same model then serves again.
  jpeg = encoded[0]
  png = bytearray(tf.io.encode_png(decoded[0]).numpy())
  idat = png.index(b"IDAT") + 8
  png[idat:idat + 64] = bytes(b ^ 0x5A for b in png[idat:idat + 64])  # header intact
  int_image = tf.train.Example()
  int_image.features.feature["image/encoded"].int64_list.value.append(7)
  bad = {
      "empty_string": ("image_bytes", dict(image_bytes=tf.constant([jpeg, b""]))),
      "not_an_image": ("image_bytes", dict(image_bytes=tf.constant([b"GET / HTTP/1.1\r\n" * 8]))),
      "truncated_jpeg": ("image_bytes", dict(image_bytes=tf.constant([jpeg[:len(jpeg) // 2]]))),
      "wrong_dtype": ("serving_default", dict(images=tf.zeros([1, 32, 32, 3], tf.float32))),
      "wrong_rank": ("serving_default", dict(images=tf.zeros([32, 32, 3], tf.uint8))),
      "zero_size_image": ("serving_default", dict(images=tf.zeros([1, 0, 32, 3], tf.uint8))),
      "four_channels": ("serving_default", dict(images=tf.zeros([1, 32, 32, 4], tf.uint8))),
      "empty_batch": ("image_bytes", dict(image_bytes=tf.constant([], tf.string))),
      "example_without_image":
          ("tf_example", dict(examples=tf.constant([tf.train.Example().SerializeToString()]))),
      "not_an_example": ("tf_example", dict(examples=tf.constant([b"\x00not a proto"]))),
      # 300 random bytes: ParseExample's own error quotes them (not UTF-8).
      "random_bytes_example":
          ("tf_example",
           dict(examples=tf.constant([records[0], np.random.default_rng(0).bytes(300)]))),
      "example_with_int_image": ("tf_example",
                                 dict(examples=tf.constant([int_image.SerializeToString()]))),
      "corrupt_png_idat": ("image_bytes", dict(image_bytes=tf.constant([jpeg, bytes(png)]))),
      "one_byte_file": ("image_bytes", dict(image_bytes=tf.constant([b"\xff"]))),
      "png_declaring_20000x20000":
          ("image_bytes", dict(image_bytes=tf.constant([jpeg, open(large_png, "rb").read()]))),
      "jpeg_over_pixel_budget": ("image_bytes",
                                 dict(image_bytes=tf.constant([open(large_jpeg, "rb").read()]))),
      "batch_over_bound": ("image_bytes", dict(image_bytes=tf.constant([jpeg] * 65))),
  }
  errors = {}
  for name, (sig, kwargs) in bad.items():
    try:
      sigs[sig](**kwargs)
      errors[name] = {"raised": None}
    except Exception as e:  # noqa: BLE001 - the report records whatever was raised
      message = getattr(e, "message", str(e))
      errors[name] = {
          "raised": type(e).__name__, "message": message.splitlines()[0][:400] if message else "",
          "full": message[:2000]
      }
  report["errors"] = errors
  report["after_errors"] = describe(sigs["image_bytes"](image_bytes=tf.constant(encoded)), sizes)
  report["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
  report["peak_rss_mb"] = peak_rss_mb()
  report["saved_model_cli"] = saved_model_cli_show_all(export_dir)
  print("REPORT " + json.dumps(report))


def saved_model_cli_show_all(export_dir):
  """The output of `saved_model_cli show --dir EXPORT_DIR --all` (TF's CLI, run in this process
  rather than in one more TensorFlow start-up)."""
  import contextlib
  import io

  from tensorflow.python.tools import saved_model_cli
  argv, sys.argv = sys.argv, ["saved_model_cli", "show", "--dir", export_dir, "--all"]
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      saved_model_cli.main()
  except SystemExit as e:
    if e.code:
      raise
  finally:
    sys.argv = argv
  return out.getvalue()


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
