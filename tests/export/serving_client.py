"""A serving client that has only TensorFlow: loads an exported detector, runs every signature
on real photos and on bad requests, lists the export with `saved_model_cli show --all`, and
prints one JSON report for the test to check.

  python serving_client.py EXPORT_DIR TFRECORD IMAGE [IMAGE ...]

The project's packages (and Model Garden, tf_keras) are blocked from importing, so the run fails
if the SavedModel needed any of them.
"""

import importlib.abc
import json
import sys

BLOCKED = ("rethink_tf", "export", "official", "tf_keras")


class _Block(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} must not be needed to serve the SavedModel")
    return None


sys.meta_path.insert(0, _Block())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


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
    masks = out["detection_masks"][i]
    boxes = out["detection_boxes"][i, :n]
    per_image.append({
        "n":
            n, "boxes_inside":
                bool(
                    np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= h) and
                    np.all(boxes[:, [1, 3]] <= w)), "masks_outside_image_empty":
                        int(masks[:, h:, :].sum() + masks[:, :, w:].sum()), "mask_values":
                            sorted(np.unique(masks).tolist()),
        "padding_empty":
            bool(
                np.all(out["detection_scores"][i, n:] == 0) and
                np.all(out["detection_classes"][i, n:] == 0) and masks[n:].sum() == 0), "classes":
                    out["detection_classes"][i, :n].tolist(),
        "names": [s.decode() for s in out["detection_class_names"][i, :n]], "scores":
            out["detection_scores"][i, :n].tolist(), "boxes":
                boxes.tolist()
    })
  report["per_image"] = per_image
  return report


def main(export_dir, record_path, image_paths):
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
  main(sys.argv[1], sys.argv[2], sys.argv[3:])
