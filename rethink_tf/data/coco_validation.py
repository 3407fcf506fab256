"""Checks and repairs of COCO images and annotations before they become TFRecords.

Real COCO-format files are messy: missing or truncated images, sizes that disagree with the
JSON, unknown categories, degenerate polygons, boxes outside the image, malformed RLE,
duplicate ids. Every such problem is one of the kinds in `PROBLEMS`: it is either repaired by
the rule stated there or the record (image or annotation) is skipped, and `Report` counts each
kind with the records it hit. The converter (`coco_tfrecord`) prints the report and, with
`--strict`, turns any problem into an error.

pycocotools is only handed what passed these checks: it decodes an invalid compressed RLE into
uninitialized memory and allocates until the kernel kills the process for a polygon with a
NaN or huge (1e12) coordinate.
"""

import collections
import dataclasses
import io
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from rethink_tf.data import coco_segmentation
from rethink_tf.data.coco_segmentation import integer_value as _int
from rethink_tf.data.decode_guard import image_problem


@dataclasses.dataclass(frozen=True)
class Problem:
  record: str  # "image" or "annotation": what the problem is about
  action: str  # "skipped" or "repaired"
  rule: str  # what was wrong and what the converter does about it


PROBLEMS: Dict[str, Problem] = {
    "malformed_image":
        Problem(
            "image", "skipped", "an image entry lacks an integer `id`, a `file_name`, or positive "
            "integer `height`/`width`; the image and its annotations are skipped"),
    "duplicate_image_id":
        Problem(
            "image", "skipped", "a second image entry with an id already seen: the first is kept, "
            "the later one skipped"),
    "missing_image":
        Problem(
            "image", "skipped", "the file named by `file_name` does not exist in the image "
            "directory; the image and its annotations are skipped"),
    "corrupt_image":
        Problem(
            "image", "skipped", "the file does not decode completely (not an image, corrupt or "
            "truncated); the image and its annotations are skipped"),
    "size_mismatch":
        Problem(
            "image", "skipped", "the decoded image size differs from the JSON `height`/`width`, "
            "so the annotations' coordinates cannot be trusted; the image is skipped"),
    "malformed_annotation":
        Problem(
            "annotation", "skipped", "an annotation lacks an integer `id`, `image_id` or "
            "`category_id`, a `bbox` of 4 finite numbers, or a `segmentation`; it is skipped"),
    "duplicate_annotation_id":
        Problem(
            "annotation", "skipped", "a second annotation with an id already seen: the first is "
            "kept, the later one skipped"),
    "orphan_annotation":
        Problem("annotation", "skipped", "`image_id` names no image of the file; skipped"),
    "unknown_category":
        Problem("annotation", "skipped",
                "`category_id` is not in the file's `categories`; skipped"),
    "empty_box":
        Problem(
            "annotation", "skipped", "the box has zero or negative width or height (or one too "
            "small to survive normalization to float32 image coordinates); skipped"),
    "box_outside_image":
        Problem("annotation", "skipped", "the box does not overlap the image; skipped"),
    "box_clipped":
        Problem(
            "annotation", "repaired", "the box extends more than 1 pixel beyond the image: clipped "
            "to the image (overshoots up to 1 pixel, from rounding, are clipped silently)"),
    "invalid_polygon":
        Problem(
            "annotation", "repaired", "a polygon has fewer than 3 points, an odd number of "
            "coordinates, or a coordinate that is not finite or lies more than one image size "
            "outside the image: that polygon is dropped, the annotation keeps its other polygons"),
    "no_valid_polygon":
        Problem("annotation", "skipped", "every polygon of the annotation is invalid (see "
                "invalid_polygon); skipped"),
    "malformed_rle":
        Problem(
            "annotation", "skipped", "an RLE whose `size` is not the image's [height, width], "
            "whose `counts` are neither a list of non-negative integers nor a valid compressed "
            "string, or whose runs do not add up to height x width; skipped"),
    "empty_mask":
        Problem(
            "annotation", "skipped", "a non-crowd instance whose segmentation covers no pixel "
            "(e.g. a polygon of collinear points); skipped"),
    "malformed_keypoints":
        Problem(
            "annotation", "repaired", "`keypoints` is not 3 numbers per keypoint of its category, "
            "or a labeled keypoint has a visibility other than 1 or 2 or lies outside the image: "
            "the whole list, or that keypoint, becomes unlabeled (v = 0); the instance is kept"),
    "missing_area":
        Problem(
            "annotation", "repaired", "`area` is absent, negative or not finite: set to the "
            "mask's pixel count (a present `area` is kept as is, as COCO evaluation uses it, even "
            "where it differs from the mask: COCO's crowd regions do)"),
}

MAX_EXAMPLES = 3  # records quoted per kind in the printed summary


class Report:
  """Problems found during a conversion: kind -> the records it hit, in the order seen."""

  def __init__(self):
    self.records: Dict[str, List[str]] = collections.defaultdict(list)

  def add(self, kind: str, record: str, detail: str = ""):
    if kind not in PROBLEMS:
      raise KeyError(f"unknown problem kind {kind!r}")
    self.records[kind].append(f"{record}: {detail}" if detail else record)

  @property
  def counts(self) -> Dict[str, int]:
    return {k: len(self.records[k]) for k in PROBLEMS if self.records.get(k)}

  def __len__(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    """The end-of-run table: kind, count, action, example records."""
    if not len(self):
      return "no problems found"
    lines = [f"{len(self)} problem(s) found (`--strict` makes any problem an error):"]
    for kind, n in self.counts.items():
      examples = "; ".join(self.records[kind][:MAX_EXAMPLES])
      more = f" (+{n - MAX_EXAMPLES} more)" if n > MAX_EXAMPLES else ""
      lines.append(f"  {kind:<24} {n:>6}  {PROBLEMS[kind].action:<8}  e.g. {examples}{more}")
    return "\n".join(lines)

  def every_record(self) -> str:
    """One line per problem: what `--strict` prints."""
    return "\n".join(f"  {kind}: {r}" for kind in self.counts for r in self.records[kind])

  def as_dict(self) -> Dict:
    return {
        k: {
            "count": len(self.records[k]), "action": PROBLEMS[k].action, "records": self.records[k]
        } for k in self.counts
    }


def image_name(image: dict) -> str:
  return f"image {image.get('id')} ({image.get('file_name', '?')})"


def annotation_name(ann: dict) -> str:
  return f"annotation {ann.get('id')} of image {ann.get('image_id')}"


def load_annotations(path: str) -> dict:
  """Reads a COCO JSON; a file-level defect is a ValueError naming the file (no record can
  be salvaged from a file that is not JSON or has no image list)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise ValueError(f"{path}: no `images` list: not a COCO annotation file")
  if not isinstance(data.get("categories"), list) or not data["categories"]:
    raise ValueError(f"{path}: no `categories` list: category ids cannot be checked")
  return data


def index_dataset(data: dict, report: Report):
  """Validates the records' ids and links.

  Returns:
    (images {id: image entry}, annotations {image id: [annotation, ...]},
     categories {id: number of keypoints its `keypoints` names list, 0 when none}).
  """
  categories = {}
  for c in data["categories"]:
    if isinstance(c, dict) and _int(c.get("id")) is not None:
      names = c.get("keypoints")
      categories[_int(c["id"])] = len(names) if isinstance(names, list) else 0
  images: Dict[int, dict] = {}
  for im in data["images"]:
    if not isinstance(im, dict):
      report.add("malformed_image", f"image entry {im!r:.60}")
      continue
    image_id, h, w = _int(im.get("id")), _int(im.get("height")), _int(im.get("width"))
    if (image_id is None or not isinstance(im.get("file_name"), str) or h is None or w is None or
        h <= 0 or w <= 0):
      report.add("malformed_image", image_name(im), "needs integer id, file_name, height, width")
      continue
    if image_id in images:
      report.add("duplicate_image_id", image_name(im),
                 f"id already used by {images[image_id]['file_name']}")
      continue
    images[image_id] = {**im, "id": image_id, "height": h, "width": w}
  by_image = collections.defaultdict(list)
  seen = set()
  for a in data.get("annotations", []):
    if not isinstance(a, dict):
      report.add("malformed_annotation", f"annotation entry {a!r:.60}")
      continue
    ann_id, image_id = _int(a.get("id")), _int(a.get("image_id"))
    missing = [
        k for k, v in (("id", ann_id), ("image_id", image_id), ("category_id",
                                                                _int(a.get("category_id"))))
        if v is None
    ]
    bbox = a.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in bbox)):
      missing.append("bbox")
    if "segmentation" not in a:
      missing.append("segmentation")
    if missing:
      report.add("malformed_annotation", annotation_name(a), f"bad or missing {missing}")
      continue
    if ann_id in seen:
      report.add("duplicate_annotation_id", annotation_name(a))
      continue
    seen.add(ann_id)
    if image_id not in images:
      report.add("orphan_annotation", annotation_name(a))
      continue
    by_image[image_id].append(
        {**a, "id": ann_id, "image_id": image_id, "category_id": _int(a["category_id"])})
  return images, by_image, categories


def read_image(image: dict, image_dir: str, report: Report) -> Optional[Tuple[bytes, str]]:
  """The image's encoded bytes and format ('jpeg' or 'png'), or None when it is skipped.

  RGB/grayscale JPEGs and PNGs of any mode (grayscale, RGBA, palette, 16-bit) are kept as they
  are; other files (CMYK JPEGs, GIF, BMP, WebP, TIFF) are re-encoded as RGB JPEG. Pillow reads
  a 16-bit PNG's values clipped to 255 (white) when converting, TensorFlow by their top byte,
  so re-encoding one would write a white image. The whole file is decoded once by Pillow and
  what is written once by the input pipeline's decoder (`decode_guard.image_problem`), so a
  truncated file, or one only Pillow reads, is caught here rather than in training.
  """
  path = os.path.join(image_dir, image["file_name"])
  name = image_name(image)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    report.add("missing_image", name, f"{path} does not exist")
    return None
  except OSError as e:
    report.add("missing_image", name, f"{path}: {e.strerror or e}")
    return None
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      fmt, mode, (w, h) = im.format, im.mode, im.size
      if (h, w) != (image["height"], image["width"]):
        report.add("size_mismatch", name, f"file is {h}x{w}, the JSON says "
                   f"{image['height']}x{image['width']}")
        return None
      if (fmt == "JPEG" and mode in ("RGB", "L")) or fmt == "PNG":
        encoded, kept = data, fmt.lower()
      else:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95)
        encoded, kept = buf.getvalue(), "jpeg"
    problem = image_problem(encoded, h, w)
    if problem:
      report.add("corrupt_image", name, f"{path}: the input pipeline's decoder: {problem}")
      return None
    return encoded, kept
  except UnidentifiedImageError:
    report.add("corrupt_image", name, f"{path}: not a recognized image format")
    return None
  except (OSError, SyntaxError, ValueError) as e:
    report.add("corrupt_image", name, f"{path}: {e}")
    return None


@dataclasses.dataclass
class Instance:
  """One annotation as written: box in pixels (ymin, xmin, ymax, xmax), the COCO category id,
  crowd flag, area, mask uint8 [h, w] and keypoints float32 [K, 3] (x, y, v) in pixels (K = 0
  for categories without keypoints)."""
  box_yxyx: Tuple[float, float, float, float]
  category_id: int
  is_crowd: bool
  area: float
  mask: np.ndarray
  keypoints: np.ndarray


def _positive_extent(lo: float, hi: float, size: int) -> bool:
  """hi > lo once normalized by the image size in float32, as the record stores them."""
  return bool(np.float32(hi / size) > np.float32(lo / size))


def check_keypoints(ann: dict, num_keypoints: int, max_keypoints: int, h: int, w: int, name: str,
                    report: Report) -> np.ndarray:
  """The annotation's keypoints (its category has `num_keypoints`) as float32
  [max_keypoints, 3] (x, y, v), repaired (see PROBLEMS["malformed_keypoints"]); unlabeled
  where absent."""
  out = np.zeros((max_keypoints, 3), np.float32)
  raw = ann.get("keypoints")
  if raw is None or num_keypoints == 0:
    return out
  if not (isinstance(raw, list) and len(raw) == 3 * num_keypoints and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw)):
    report.add(
        "malformed_keypoints", name, f"{len(raw) if isinstance(raw, list) else raw!r:.20}"
        f" values for {num_keypoints} keypoints")
    return out
  points = np.asarray(raw, np.float32).reshape(num_keypoints, 3)
  labeled = points[:, 2] != 0
  ok = (np.isin(points[:, 2], (1, 2)) & (points[:, 0] >= 0) & (points[:, 0] <= w) &
        (points[:, 1] >= 0) & (points[:, 1] <= h))
  bad = labeled & ~ok
  if bad.any():
    report.add("malformed_keypoints", name, f"keypoint(s) {np.flatnonzero(bad).tolist()} made "
               "unlabeled")
  keep = np.flatnonzero(labeled & ok)
  out[keep] = points[keep]
  return out


def check_annotation(ann: dict, h: int, w: int, categories: Mapping[int, int],
                     report: Report) -> Optional[Instance]:
  """Validates and repairs one annotation of an h x w image (ids already checked by
  `index_dataset`; `categories` maps each id to its number of keypoints); None when it is
  skipped."""
  name = annotation_name(ann)
  if ann["category_id"] not in categories:
    report.add("unknown_category", name, f"category_id {ann['category_id']}")
    return None
  x, y, bw, bh = (float(v) for v in ann["bbox"])
  if not (_positive_extent(x, x + bw, w) and _positive_extent(y, y + bh, h)):
    report.add("empty_box", name, f"bbox {ann['bbox']}")
    return None
  x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
  if not (_positive_extent(x0, x1, w) and _positive_extent(y0, y1, h)):
    report.add("box_outside_image", name, f"bbox {ann['bbox']} in a {h}x{w} image")
    return None
  if max(-x, -y, x + bw - w, y + bh - h) > 1.0:
    report.add("box_clipped", name, f"bbox {ann['bbox']} clipped to a {h}x{w} image")
  crowd = bool(ann.get("iscrowd", 0))
  mask = coco_segmentation.decode_segmentation(ann["segmentation"], h, w, name, report)
  if mask is None:
    return None
  if not crowd and not mask.any():
    report.add("empty_mask", name)
    return None
  area = ann.get("area")
  if isinstance(
      area, bool) or not isinstance(area, (int, float)) or not (math.isfinite(area) and area >= 0):
    report.add("missing_area", name, f"area {area!r}")
    area = float(mask.sum())
  keypoints = check_keypoints(ann, categories[ann["category_id"]],
                              max(categories.values(), default=0), h, w, name, report)
  return Instance((y0, x0, y1, x1), ann["category_id"], crowd, float(area), mask, keypoints)
