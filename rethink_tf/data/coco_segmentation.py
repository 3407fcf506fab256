"""COCO segmentations (polygons, uncompressed and compressed RLE) checked before pycocotools
sees them, and decoded to masks.

pycocotools decodes an invalid compressed RLE into uninitialized memory and allocates until
the kernel kills the process for a polygon with a NaN or huge (1e12) coordinate: only what
passes these checks reaches it. Problems are reported into a `coco_validation.Report` under
its `PROBLEMS` kinds.
"""

import math
from typing import List, Optional, Tuple

import numpy as np
from pycocotools import mask as mask_utils


def integer_value(value) -> Optional[int]:
  """`value` as an int, or None: COCO ids, sizes and RLE counts are integers (some exceed
  int32); bools and floats with a fraction are not."""
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return None


def rle_string_counts(counts: bytes) -> List[int]:
  """Run lengths of a compressed COCO RLE string (the format of pycocotools' rleToString).

  Each run is a little-endian sequence of 5-bit groups stored as chr(48 + group), bit 0x20
  marking that another group follows, the last group sign-extended from bit 0x10; from the
  third run on, the value is a difference to the run two before. Raises ValueError on a
  character outside the alphabet or a truncated group sequence.
  """
  runs: List[int] = []
  p = 0
  while p < len(counts):
    value, shift, more = 0, 0, True
    while more:
      if p >= len(counts):
        raise ValueError("truncated run")
      c = counts[p] - 48
      if not 0 <= c < 64:
        raise ValueError(f"character {chr(counts[p])!r} outside the RLE alphabet")
      value |= (c & 0x1F) << shift
      more = bool(c & 0x20)
      p += 1
      shift += 5
      if not more and c & 0x10:
        value |= -1 << shift
    if len(runs) > 2:
      value += runs[-2]
    runs.append(value)
  return runs


def checked_rle(seg: dict, h: int, w: int) -> Tuple[Optional[dict], str]:
  """(a pycocotools RLE equal to `seg`, '') or (None, what is wrong with it)."""
  size, counts = seg.get("size"), seg.get("counts")
  if not (isinstance(size, (list, tuple)) and [integer_value(s) for s in size] == [h, w]):
    return None, f"size {size!r:.40} is not the image's [{h}, {w}]"
  if isinstance(counts, list):
    if not all(integer_value(c) is not None for c in counts):
      return None, "counts are not all integers"
    runs = [int(c) for c in counts]
  elif isinstance(counts, (str, bytes)):
    try:
      raw = counts.encode("ascii") if isinstance(counts, str) else counts
      runs = rle_string_counts(raw)
    except (UnicodeEncodeError, ValueError) as e:
      return None, f"compressed counts do not parse ({e})"
  else:
    return None, f"counts of type {type(counts).__name__}"
  if any(r < 0 for r in runs):
    return None, "a run is negative"
  if sum(runs) != h * w:
    return None, f"runs add up to {sum(runs)}, not {h} x {w} = {h * w}"
  if isinstance(counts, list):
    return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w), ""
  return {"size": [h, w], "counts": raw}, ""


def polygon_ok(poly, h: int, w: int) -> bool:
  if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
    return False
  for k, v in enumerate(poly):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return False
    limit = w if k % 2 == 0 else h
    if not -limit <= v <= 2 * limit:
      return False
  return True


def decode_segmentation(seg, h: int, w: int, name: str, report) -> Optional[np.ndarray]:
  """Checks, repairs and decodes a COCO segmentation -> uint8 [h, w] (None when skipped)."""
  if isinstance(seg, list):
    polys = [p for p in seg if polygon_ok(p, h, w)]
    if len(polys) < len(seg):
      kind = "invalid_polygon" if polys else "no_valid_polygon"
      report.add(kind, name, f"{len(seg) - len(polys)} of {len(seg)} polygon(s) invalid")
      if not polys:
        return None
    rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polys], h, w))
  elif isinstance(seg, dict):
    rle, problem = checked_rle(seg, h, w)
    if rle is None:
      report.add("malformed_rle", name, problem)
      return None
  else:
    report.add("malformed_annotation", name, f"segmentation of type {type(seg).__name__}")
    return None
  return mask_utils.decode(rle).astype(np.uint8)
