r"""Runs an exported detector on image files and draws what it found.

  python -m export.predict --saved_model=D --image=X.jpg [--image=...] --output=OUT.png \
      [--min_score=0.5] [--json=DETECTIONS.json]

D is one version directory (D/1) or the export root (its highest version is used). Each image
goes through the `image_bytes` signature; the figure has one panel per image with masks, boxes,
class names and scores of the detections at or above --min_score. Needs only TensorFlow, numpy
and matplotlib (not this project), like any client of the SavedModel.
"""

import json
import os

from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import console  # noqa: E402

FLAGS = flags.FLAGS


def resolve_version(path: str) -> str:
  """A SavedModel directory: `path` itself, or the highest integer version inside it."""
  if tf.saved_model.contains_saved_model(path):
    return path
  versions = sorted((int(d) for d in tf.io.gfile.listdir(path) if d.strip("/").isdigit()),
                    reverse=True) if tf.io.gfile.isdir(path) else []
  for v in versions:
    candidate = os.path.join(path, str(v))
    if tf.saved_model.contains_saved_model(candidate):
      return candidate
  raise FileNotFoundError(f"{path}: no saved_model.pb here nor in an integer version "
                          "subdirectory")


def decode_rle(counts: bytes, height: int, width: int) -> np.ndarray:
  """A COCO compressed RLE string (pycocotools' `counts`) -> bool [height, width], with numpy.

  Runs alternate 0s and 1s in column-major order; each is written in 5-bit groups, low first,
  0x20 = more groups follow, 0x10 in the last group = negative, offset by 48; from the fourth
  run on, the value is the difference to the run two before.
  """
  runs, p = [], 0
  while p < len(counts):
    x, k, more = 0, 0, True
    while more:
      c = counts[p] - 48
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p, k = p + 1, k + 1
      if not more and c & 0x10:
        x |= -1 << (5 * k)
    runs.append(x + runs[-2] if len(runs) > 2 else x)
  if sum(runs) != height * width:
    raise ValueError(f"RLE counts cover {sum(runs)} pixels, the image has {height * width}")
  flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
  return flat.reshape(width, height).T


def detect(model, encoded: bytes):
  """One image's detections as numpy arrays (padding removed)."""
  out = model.signatures["image_bytes"](image_bytes=tf.constant([encoded]))
  n = int(out["num_detections"][0])
  h, w = (int(v) for v in out["image_size"][0])
  det = {
      "boxes": out["detection_boxes"][0, :n].numpy(),
      "scores": out["detection_scores"][0, :n].numpy(), "classes": out["detection_classes"]
                                                                   [0, :n].numpy(),
      "names": [s.decode() for s in out["detection_class_names"][0, :n].numpy()]
  }
  if "detection_masks_rle" in out:
    det["masks"] = np.stack([
        decode_rle(c, h, w) for c in out["detection_masks_rle"][0, :n].numpy()
    ]) if n else np.zeros([0, h, w], bool)
  return det


def draw(ax, image: np.ndarray, det, min_score: float, title: str):
  """Masks (translucent), boxes and "name score" labels on one axis."""
  ax.imshow(image)
  keep = np.flatnonzero(det["scores"] >= min_score)
  colours = plt.get_cmap("tab10")
  overlay = np.zeros(image.shape[:2] + (4,), np.float32)
  for rank, i in enumerate(keep):
    colour = colours(rank % 10)
    if "masks" in det:
      m = det["masks"][i]
      overlay[m] = (*colour[:3], 0.45)
    y0, x0, y1, x1 = det["boxes"][i]
    ax.add_patch(
        plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
    ax.text(x0,
            y0,
            f"{det['names'][i]} {det['scores'][i]:.2f}",
            fontsize=7,
            color="white",
            va="bottom",
            bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))
  ax.imshow(overlay)
  ax.set_title(f"{title}: {len(keep)} detections >= {min_score:g}", fontsize=8)
  ax.axis("off")


def run(model, image_paths, output: str, min_score: float = 0.5, json_path=None):
  """Detects on every image with a loaded SavedModel, draws the figure, returns the report."""
  n = len(image_paths)
  cols = min(n, 3)
  rows = (n + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
  report = []
  for ax, path in zip(axes.flat, image_paths):
    with open(path, "rb") as f:
      encoded = f.read()
    det = detect(model, encoded)
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
    draw(ax, image, det, min_score, os.path.basename(path))
    kept = [i for i in range(len(det["scores"])) if det["scores"][i] >= min_score]
    report.append({
        "image":
            path, "detections": [{
                "category_id": int(det["classes"][i]), "name": det["names"][i],
                "score": round(float(det["scores"][i]),
                               4), "box_yxyx": [round(float(v), 2) for v in det["boxes"][i]]
            } for i in kept]
    })
    logging.info(f"{path}: {len(kept)} detections >= {min_score:g}" + "".join(
        f"\n  {d['name']} {d['score']:.3f} {d['box_yxyx']}" for d in report[-1]["detections"]))
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(output, dpi=100)
  plt.close(fig)
  logging.info(f"wrote {output}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=1)
  return report


def main(argv):
  console.show_library_logs()
  del argv
  run(tf.saved_model.load(resolve_version(FLAGS.saved_model)), FLAGS.image, FLAGS.output,
      FLAGS.min_score, FLAGS.json)


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-predict`)."""
  flags.DEFINE_string("saved_model", None, "Export root or one version directory.", required=True)
  flags.DEFINE_multi_string("image", [], "Image file (repeatable).")
  flags.DEFINE_string("output", "predictions.png", "Figure to write (PNG).")
  flags.DEFINE_float("min_score", 0.5, "Draw detections scoring at least this.")
  flags.DEFINE_string("json", None, "Also write the drawn detections as JSON.")
  flags.mark_flag_as_required("image")
  app.run(main)


if __name__ == "__main__":
  console_main()
