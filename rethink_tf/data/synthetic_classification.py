"""The miniature study's stand-in for ImageNet: a seeded synthetic classification set.

Each image holds one large object of one of ten classes (pentagon, hexagon, five-point star,
plus sign, ring, ellipse, L, T, chevron, crescent) with random size, rotation, position,
colour and fill texture, on the same kind of cluttered gradient background as the detection
data. None of the classes is a detection category (circle, square, triangle), so, as with
ImageNet and COCO, what transfers is the visual vocabulary (edges, corners, textures, shape
parts), not the labels. The same seed gives the same arrays; generation takes a few seconds
and happens in memory.
"""

from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from rethink_tf.data.synthetic import _background, _fill

CLASS_NAMES = ("pentagon", "hexagon", "star", "plus", "ring", "ellipse", "ell", "tee", "chevron",
               "crescent")


def _rotate(points: np.ndarray, angle: float, cy: float, cx: float, r: float) -> np.ndarray:
  """Unit-frame points [V, 2] (x, y) -> rotated by `angle`, scaled by `r`, centred at (cx, cy)."""
  c, s = np.cos(angle), np.sin(angle)
  rot = points @ np.array([[c, s], [-s, c]])
  return rot * r + np.array([cx, cy])


def _regular(n: int) -> np.ndarray:
  t = np.arange(n) * 2 * np.pi / n
  return np.stack([np.cos(t), np.sin(t)], 1)


def _unit_polygon(kind: int, rng) -> np.ndarray:
  """Vertices [V, 2] of class `kind` in a frame of radius ~1 (polygon classes only)."""
  if kind == 0:
    return _regular(5)
  if kind == 1:
    return _regular(6)
  if kind == 2:  # star: alternate outer and inner radius
    pts = _regular(10)
    return pts * np.where(np.arange(10) % 2 == 0, 1.0, 0.42)[:, None]
  if kind == 3:  # plus sign of arm half-width w
    w = rng.uniform(0.22, 0.34)
    return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w],
                     [-1, w], [-1, -w], [-w, -w]])
  if kind == 6:  # L
    w = rng.uniform(0.35, 0.5)
    return np.array([[-1, -1], [-1 + w, -1], [-1 + w, 1 - w], [1, 1 - w], [1, 1], [-1, 1]])
  if kind == 7:  # T
    w = rng.uniform(0.18, 0.28)
    return np.array([[-1, -1], [1, -1], [1, -1 + 2 * w], [w, -1 + 2 * w], [w, 1], [-w, 1],
                     [-w, -1 + 2 * w], [-1, -1 + 2 * w]])
  if kind == 8:  # chevron
    w = rng.uniform(0.3, 0.45)
    return np.array([[-1, -0.8], [0, 0.2], [1, -0.8], [1, -0.8 + w * 2], [0, 0.2 + w * 2],
                     [-1, -0.8 + w * 2]])
  raise ValueError(f"class {kind} is not a polygon class")


def _object_mask(kind: int, rng, size: int, cy: float, cx: float, r: float,
                 angle: float) -> np.ndarray:
  """uint8 [size, size] mask of one object of class `kind`."""
  pil = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(pil)
  if kind in (4, 5, 9):  # ring, ellipse, crescent: ellipses drawn then rotated with PIL
    big = Image.new("L", (4 * size, 4 * size), 0)
    d = ImageDraw.Draw(big)
    c, R = 2 * size, 4 * r
    if kind == 4:
      d.ellipse([c - R, c - R, c + R, c + R], fill=1)
      inner = R * rng.uniform(0.45, 0.65)
      d.ellipse([c - inner, c - inner, c + inner, c + inner], fill=0)
    elif kind == 5:
      ry = R * rng.uniform(0.35, 0.6)
      d.ellipse([c - R, c - ry, c + R, c + ry], fill=1)
    else:
      d.ellipse([c - R, c - R, c + R, c + R], fill=1)
      off = R * rng.uniform(0.35, 0.6)
      d.ellipse([c - R + off, c - R, c + R + off, c + R], fill=0)
    big = big.rotate(np.degrees(angle), resample=Image.NEAREST)
    big = big.resize((size, size), Image.BILINEAR)
    mask = (np.asarray(big) > 0).astype(np.uint8)
    # Move the centre from the middle of the canvas to (cy, cx).
    return np.roll(mask, (int(round(cy - size / 2)), int(round(cx - size / 2))), (0, 1))
  poly = _rotate(_unit_polygon(kind, rng), angle, cy, cx, r)
  draw.polygon([tuple(p) for p in poly], fill=1)
  return np.asarray(pil, dtype=np.uint8)


def make_example(rng, size: int) -> Tuple[np.ndarray, int]:
  """One image uint8 [size, size, 3] and its class in [0, 10)."""
  label = int(rng.integers(len(CLASS_NAMES)))
  img = _background(rng, size, size)
  for _ in range(20):
    r = rng.uniform(0.22, 0.45) * size
    cy, cx = rng.uniform(r * 0.9, size - r * 0.9, 2)
    mask = _object_mask(label, rng, size, cy, cx, r, rng.uniform(0, 2 * np.pi))
    if mask.sum() >= 0.02 * size * size:
      break
  ys, xs = np.nonzero(mask)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  tex = _fill(rng, y1 - y0, x1 - x0, rng.uniform(0, 255, 3))
  m = mask[y0:y1, x0:x1, None].astype(bool)
  img[y0:y1, x0:x1] = np.where(m, tex, img[y0:y1, x0:x1])
  img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
  return img, label


def generate(num_images: int, seed: int, size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, size, size, 3], labels int32 [N]); the same seed gives the same arrays."""
  rng = np.random.default_rng(seed)
  images = np.empty((num_images, size, size, 3), np.uint8)
  labels = np.empty((num_images,), np.int32)
  for i in range(num_images):
    images[i], labels[i] = make_example(rng, size)
  return images, labels
