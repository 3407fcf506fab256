"""The embedded default dataset: seeded synthetic shapes in COCO instance-segmentation format.

Every image has a textured gradient background with clutter (lines, dots, blobs of colours the
objects also use), then 0-6 objects of three categories (circle, square, triangle) of 10-64 px,
random colour, rotation and fill texture (flat, stripes or noise); objects overlap (each stays
at least half visible), and the annotation is the visible part as polygons. About 5% of images
hold a crowd (a cluster of small shapes of one category) annotated as one `iscrowd` region
stored as uncompressed RLE, and about 5% hold no object at all. The same seed gives the same
bytes. The result is written once to a cache directory and then goes through the same
converter as real COCO (`coco_tfrecord`).
"""

import hashlib
import io
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import gin
import numpy as np
from absl import logging
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from rethink_tf.errors import ConfigError

CATEGORIES = [{"id": 1, "name": "circle",
               "supercategory": "shape"}, {"id": 2, "name": "square", "supercategory": "shape"},
              {"id": 3, "name": "triangle", "supercategory": "shape"}]
FORMAT_VERSION = 1  # bump when the generator's output changes, to invalidate caches
# The smallest image side generated: the shapes are 10-64 px (a smaller image holds no object).
MIN_IMAGE_SIDE = 32
# The optional keypoint task: each shape's extreme points (its topmost, bottommost, leftmost
# and rightmost vertex); a horizontal flip swaps the left and right ones.
KEYPOINT_NAMES = ("top", "bottom", "left_point", "right_point")


def _shape_polygon(kind: int, cy: float, cx: float, size: float, angle: float) -> np.ndarray:
  """Vertices [V, 2] (x, y) of a shape of category `kind` with circumradius size / 2."""
  r = size / 2.0
  if kind == 1:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
  elif kind == 2:
    t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
  else:
    t = angle + np.arange(3) * 2 * np.pi / 3
  return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _fill(rng, h: int, w: int, colour: np.ndarray) -> np.ndarray:
  """A textured [h, w, 3] fill of the base colour: flat, stripes or noise."""
  style = rng.integers(3)
  img = np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
  if style == 1:
    period = rng.integers(4, 10)
    yy, xx = np.mgrid[:h, :w]
    stripes = ((xx + yy * rng.choice([-1, 0, 1])) // period) % 2
    img *= (0.65 + 0.35 * stripes)[..., None]
  elif style == 2:
    img += rng.normal(0, 25, (h, w, 1))
  return img


def _background(rng, h: int, w: int) -> np.ndarray:
  a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None,
                                                                                          None]
  img = a * (1 - t) + b * t + rng.normal(0, 12, (h, w, 3))
  img = np.broadcast_to(img, (h, w, 3)).astype(np.float32).copy()
  pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for _ in range(rng.integers(2, 9)):  # clutter the model must learn to ignore
    c = tuple(int(v) for v in rng.uniform(0, 255, 3))
    kind = rng.integers(3)
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    if kind == 0:
      draw.line([x, y, x + rng.uniform(-w / 2, w / 2), y + rng.uniform(-h / 2, h / 2)],
                fill=c,
                width=int(rng.integers(1, 4)))
    elif kind == 1:
      s = rng.uniform(2, 5)
      draw.ellipse([x - s, y - s, x + s, y + s], fill=c)
    else:  # irregular blob: not one of the categories
      pts = [(x + rng.uniform(-12, 12), y + rng.uniform(-12, 12)) for _ in range(7)]
      draw.polygon(pts, fill=c)
  return np.asarray(pil).astype(np.float32)


def _raster(poly: np.ndarray, h: int, w: int) -> np.ndarray:
  pil = Image.new("L", (w, h), 0)
  ImageDraw.Draw(pil).polygon([tuple(p) for p in poly], fill=1)
  return np.asarray(pil, dtype=np.uint8)


def _mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
  polys = []
  for c in contours:
    if len(c) >= 3:
      polys.append([float(v) + 0.5 for v in c.reshape(-1)])  # pixel centres
  return polys


def _paint(img, mask, rng, colour):
  ys, xs = np.nonzero(mask)
  if not ys.size:  # a shape that rasterizes to no pixel (a crowd member off a small image)
    return
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  tex = _fill(rng, y1 - y0, x1 - x0, colour)
  m = mask[y0:y1, x0:x1, None].astype(bool)
  img[y0:y1, x0:x1] = np.where(m, tex, img[y0:y1, x0:x1])


def extreme_points(poly: np.ndarray) -> np.ndarray:
  """[4, 2] (x, y): the polygon's top, bottom, leftmost and rightmost vertices."""
  return poly[[
      np.argmin(poly[:, 1]),
      np.argmax(poly[:, 1]),
      np.argmin(poly[:, 0]),
      np.argmax(poly[:, 0])
  ]]


def _keypoints(poly: np.ndarray, visible: np.ndarray) -> List[float]:
  """COCO keypoints [x, y, v] * 4 of a shape: v = 2 where the point's 3 x 3 pixel
  neighbourhood holds part of the annotated (visible) mask, 1 where a later object hides it,
  0 outside the image (then x = y = 0)."""
  h, w = visible.shape
  out = []
  for x, y in extreme_points(poly):
    if not (0 <= x <= w and 0 <= y <= h):
      out += [0.0, 0.0, 0]
      continue
    r, c = min(int(y), h - 1), min(int(x), w - 1)
    seen = visible[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any()
    out += [round(float(x), 2), round(float(y), 2), 2 if seen else 1]
  return out


def make_image(rng,
               size,
               min_obj: int,
               max_obj: int,
               min_size: float,
               max_size: float,
               crowd_prob: float,
               empty_prob: float,
               keypoints: bool = False):
  """One image: uint8 [h, w, 3] (`size` = side, or (h, w)) and its annotations (category_id,
  polygons/RLE, crowd; with `keypoints`, each object's `KEYPOINT_NAMES` as COCO keypoints).
  The keypoints draw no random numbers: the images and other annotations are the same with or
  without them."""
  h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
  img = _background(rng, h, w)
  objects: List[Tuple[int, np.ndarray, np.ndarray]] = []  # (category, full mask, polygon)
  occupied = np.zeros((h, w), np.uint8)
  crowd = None
  if rng.random() < crowd_prob:
    kind = int(rng.integers(1, 4))
    cy, cx = rng.uniform(0.25 * h, 0.75 * h), rng.uniform(0.25 * w, 0.75 * w)
    region = np.zeros((h, w), np.uint8)
    colour = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(8, 16)):
      poly = _shape_polygon(kind, cy + rng.normal(0, 8), cx + rng.normal(0, 8), rng.uniform(5, 9),
                            rng.uniform(0, 2 * np.pi))
      m = _raster(poly, h, w)
      _paint(img, m, rng, colour * rng.uniform(0.8, 1.2))
      region |= m
    if region.any():
      crowd = (kind, region)
      occupied |= region
  n = 0 if rng.random() < empty_prob else int(rng.integers(min(min_obj, max_obj), max_obj + 1))
  for _ in range(n):
    for _attempt in range(20):
      kind = int(rng.integers(1, 4))
      s = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
      s = min(s, 1.5 * min(h, w))  # its centre range below must not be empty (small images)
      cy, cx = rng.uniform(s / 3, h - s / 3), rng.uniform(s / 3, w - s / 3)
      poly = _shape_polygon(kind, cy, cx, s, rng.uniform(0, 2 * np.pi))
      m = _raster(poly, h, w)
      area = int(m.sum())
      if area < 30:
        continue
      # Each earlier object must stay at least half visible, the new one must overlap at
      # most half of itself with what lies below.
      if (m & occupied).sum() > 0.5 * area:
        continue
      ok = all(((full & ~m.astype(bool)).sum() >= 0.5 * full.sum()) for _, full, _ in objects)
      if ok:
        break
    else:
      continue
    colour = rng.uniform(0, 255, 3)
    _paint(img, m, rng, colour)
    objects.append((kind, m.astype(bool), poly))
    occupied |= m
  anns = []
  for i, (kind, full, poly) in enumerate(objects):
    visible = full.copy()
    for _, later, _ in objects[i + 1:]:
      visible &= ~later
    polys = _mask_to_polygons(visible)
    if not polys or visible.sum() < 20:
      continue
    anns.append({"category_id": kind, "segmentation": polys, "iscrowd": 0})
    if keypoints:  # visibility as annotated (slivers without a polygon do not count)
      annotated = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
      anns[-1]["keypoints"] = _keypoints(poly, annotated.astype(bool))
  if crowd is not None:
    kind, region = crowd
    for _, full, _ in objects:
      region = region & ~full
    if region.sum() > 0:
      # Uncompressed counts list, the form COCO uses for crowd ground truth.
      counts = _rle_counts(region)
      anns.append(
          {"category_id": kind, "segmentation": {"size": [h, w], "counts": counts}, "iscrowd": 1})
  img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
  return img, anns


def _rle_counts(mask: np.ndarray) -> List[int]:
  """Uncompressed COCO RLE counts (column-major runs starting with zeros)."""
  flat = mask.reshape(-1, order="F").astype(np.uint8)
  counts, prev, run = [], 0, 0
  for v in flat:
    if v != prev:
      counts.append(run)
      run, prev = 0, v
    run += 1
  counts.append(run)
  return counts


def generate_split(
    output_dir: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    min_size: float = 10.0,
    max_size: float = 64.0,
    crowd_prob: float = 0.05,
    empty_prob: float = 0.05,
    keypoints: bool = False,
    image_sizes: Sequence[Sequence[int]] = ()) -> Dict[str, str]:
  """Writes `output_dir/{split}/*.jpg` and `output_dir/instances_{split}.json` (with
  `keypoints`, every object carries its `KEYPOINT_NAMES` and every category names them).
  `image_sizes`: (h, w) of image i is image_sizes[i % len] (landscape and portrait images, as
  real photos); empty: every image is image_size x image_size.

  Returns {"annotations": json path, "image_dir": directory}.
  """
  rng = np.random.default_rng(seed)
  image_dir = os.path.join(output_dir, split)
  os.makedirs(image_dir, exist_ok=True)
  images, annotations = [], []
  ann_id = 1
  for i in range(num_images):
    h, w = tuple(image_sizes[i % len(image_sizes)]) if image_sizes else (image_size, image_size)
    img, anns = make_image(rng, (h, w), min_objects, max_objects, min_size, max_size, crowd_prob,
                           empty_prob, keypoints)
    image_id = i + 1
    name = f"{split}_{image_id:06d}.jpg"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    with open(os.path.join(image_dir, name), "wb") as f:
      f.write(buf.getvalue())
    images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    for a in anns:
      seg = a["segmentation"]
      if a["iscrowd"]:
        rle = mask_utils.frPyObjects(seg, h, w)
      else:
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
      x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
      annotations.append({
          "id": ann_id, "image_id": image_id, "category_id": a["category_id"], "segmentation": seg,
          "iscrowd": a["iscrowd"], "area": float(mask_utils.area(rle)), "bbox": [x, y, bw, bh]
      })
      if keypoints:
        points = a.get("keypoints", [0.0] * 3 * len(KEYPOINT_NAMES))
        annotations[-1].update(keypoints=points,
                               num_keypoints=sum(1 for v in points[2::3] if v > 0))
      ann_id += 1
  ann_path = os.path.join(output_dir, f"instances_{split}.json")
  with open(ann_path + ".tmp", "w") as f:
    categories = ([{**c, "keypoints": list(KEYPOINT_NAMES), "skeleton": []} for c in CATEGORIES]
                  if keypoints else CATEGORIES)
    json.dump(
        {
            "images": images, "annotations": annotations, "categories": categories, "info": {
                "description": "rethink_tf synthetic shapes", "seed": seed,
                "version": FORMAT_VERSION
            }
        }, f)
  os.replace(ann_path + ".tmp", ann_path)
  return {"annotations": ann_path, "image_dir": image_dir}


def check_parameters(num_train: int, num_val: int, image_size: int, max_objects: int,
                     num_shards: int, image_sizes: Sequence[Sequence[int]]):
  """Raises ConfigError naming the first `SyntheticDataset` parameter the generator cannot
  honour; every accepted combination generates a valid dataset (`tests/data/test_synthetic.py`
  checks it over random sizes and object counts)."""

  def refuse(name, value, why):
    raise ConfigError(f"SyntheticDataset.{name} = {value!r}: {why}")

  for name, value in (("num_train", num_train), ("num_val", num_val), ("num_shards", num_shards)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      refuse(name, value, "must be a whole number of at least 1")
  if isinstance(max_objects,
                bool) or not isinstance(max_objects,
                                        (int, np.integer)) or not (0 <= max_objects <= 100):
    refuse("max_objects", max_objects, "must be a whole number from 0 to 100")
  sides = [("image_size", image_size)] if not image_sizes else []
  for i, hw in enumerate(image_sizes):
    if not isinstance(hw, (list, tuple)) or len(hw) != 2:
      refuse("image_sizes", tuple(image_sizes), f"entry {i} is not an (h, w) pair")
    sides += [(f"image_sizes[{i}]", v) for v in hw]
  for name, side in sides:
    if isinstance(
        side, bool) or not isinstance(side,
                                      (int, np.integer)) or not (MIN_IMAGE_SIDE <= side <= 4096):
      refuse(
          name, side, f"image sides must be whole numbers from {MIN_IMAGE_SIDE} (the shapes "
          "are 10-64 px) to 4096")


def default_cache_dir() -> str:
  return os.environ.get("RETHINK_TF_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "rethink_tf"))


@gin.configurable
class SyntheticDataset:
  """The embedded dataset, generated and converted to TFRecords once per parameter set."""

  def __init__(self,
               num_train: int = 2000,
               num_val: int = 200,
               seed: int = 0,
               image_size: int = 128,
               max_objects: int = 6,
               cache_dir: Optional[str] = None,
               num_shards: int = 4,
               keypoints: bool = False,
               image_sizes: Sequence[Sequence[int]] = ()):
    """image_sizes: (h, w) of the images, cycled (e.g. landscape and portrait); empty: squares
    of image_size. Parameters it cannot honour raise ConfigError naming them, before anything
    is written."""
    check_parameters(num_train=num_train,
                     num_val=num_val,
                     image_size=image_size,
                     max_objects=max_objects,
                     num_shards=num_shards,
                     image_sizes=image_sizes)
    self.params = dict(num_train=num_train,
                       num_val=num_val,
                       seed=seed,
                       image_size=image_size,
                       max_objects=max_objects,
                       version=FORMAT_VERSION)
    if keypoints:  # only then: the cache key of every existing configuration stays the same
      self.params["keypoints"] = True
    if image_sizes:  # the same
      self.params["image_sizes"] = [[int(v) for v in hw] for hw in image_sizes]
    self.num_shards = num_shards
    key = hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:10]
    self.root = os.path.join(cache_dir or default_cache_dir(), f"synthetic_shapes_{key}")

  @property
  def category_ids(self) -> List[int]:
    return [c["id"] for c in CATEGORIES]

  def prepare(self, splits=("train", "val")) -> Dict[str, str]:
    """Generates and converts the `splits` not yet in the cache; returns train/val patterns
    and val annotations. Evaluation prepares ("val",) alone."""
    from rethink_tf.data import coco_tfrecord  # the same converter as real COCO
    out = {
        "train_pattern": os.path.join(self.root, "train-*.tfrecord"),
        "val_pattern": os.path.join(self.root, "val-*.tfrecord"),
        "val_annotations": os.path.join(self.root, "instances_val.json")
    }
    if os.path.exists(os.path.join(self.root, "DONE")):  # every split
      return out
    os.makedirs(self.root, exist_ok=True)
    p = self.params
    for split, n, seed in (("train", p["num_train"], p["seed"]), ("val", p["num_val"],
                                                                  p["seed"] + 1)):
      done = os.path.join(self.root, f"DONE-{split}")
      if split not in splits or os.path.exists(done):
        continue
      t = time.time()
      src = generate_split(self.root,
                           split,
                           n,
                           seed,
                           p["image_size"],
                           max_objects=p["max_objects"],
                           keypoints=p.get("keypoints", False),
                           image_sizes=p.get("image_sizes", ()))
      counts = coco_tfrecord.convert(src["annotations"],
                                     src["image_dir"],
                                     os.path.join(self.root, split),
                                     self.num_shards,
                                     strict=True)  # generated data has no excuse
      logging.info(
          f"synthetic {split}: {counts['images']} images, {counts['instances']} instances, "
          f"{counts['crowd']} crowd regions -> {self.root} ({time.time() - t:.1f}s)")
      with open(done, "w") as f:
        json.dump(self.params, f)
    if all(os.path.exists(os.path.join(self.root, f"DONE-{s}")) for s in ("train", "val")):
      with open(os.path.join(self.root, "DONE"), "w") as f:
        json.dump(self.params, f)
    return out
