"""RoIAlign (He et al. 2017) for NHWC features and [y1, x1, y2, x2] boxes in image pixels.

Matches torchvision/detectron2 `roi_align` bin for bin: each output bin is the mean of
`sampling_ratio**2` bilinear samples taken at `y = y1 + (i + (iy + 0.5) / sr) * bin_h`; with
`aligned=True` the box is shifted by -0.5 feature pixel (detectron2 ROIAlignV2). Samples more
than one pixel outside the map are 0; samples in (-1, 0] are clamped to the edge. Unlike
`tf.image.crop_and_resize` (which samples at corners) this is the Detectron op.
`sampling_ratio=0` is torchvision's adaptive count, ceil(roi_h / out) x ceil(roi_w / out)
samples per bin (detectron2's model-zoo default at test time), on a static grid of at most
`max_adaptive_samples` per axis: exact up to that count, evenly spread samples beyond it.

Bilinear weights are separable, so we gather 4 corners for an S x S grid (S = out * sr) with
one flat gather per corner over a [B, sum(H*W), C] tensor; multilevel RoIAlign uses the same
gather over all levels concatenated, so it costs one op whatever the number of levels.
Everything is static-shape and XLA-compilable.
"""

import math
from typing import Dict, Optional

import tensorflow as tf

CANONICAL_BOX_SIZE = 224.0
CANONICAL_LEVEL = 4
# Sample slots per bin and axis of adaptive sampling (sampling_ratio=0): exact for RoIs up to
# 4 bins' worth of feature pixels per bin, i.e. 28 feature px at 7x7 (a square box at its own
# FPN level is 14-28 px there).
MAX_ADAPTIVE_SAMPLES = 4


def _axis_samples(start, size, extent, out, sr, count=None):
  """Sample coordinates along one axis and their bilinear corners/weights.

  Args:
    start, size: [B, N] box start and size in feature pixels.
    extent: [B, N] feature-map size along this axis (float).
    out, sr: output bins and sample slots per bin.
    count: [B, N] float samples per bin actually taken (adaptive sampling; <= sr), or None
      for all sr. Slots at and beyond the count get zero weight.
  Returns:
    lo, hi: [B, N, S] int32 corner indices; w_lo, w_hi: [B, N, S] weights (0 outside the map).
  """
  bin_size = size / out
  slot = tf.range(out * sr)
  bins = tf.cast(slot // sr, tf.float32)  # [S] bin of each slot
  within = tf.cast(slot % sr, tf.float32) + 0.5  # [S] slot inside its bin
  if count is None:
    grid = bins + within / sr  # in bins, [S]
    pos = start[..., None] + grid * bin_size[..., None]  # [B, N, S]
    used = 1.0
  else:
    per_bin = tf.maximum(count, 1.0)[..., None]
    pos = start[..., None] + (bins + within / per_bin) * bin_size[..., None]
    used = tf.cast(within < count[..., None], tf.float32)
  ext = extent[..., None]
  valid = tf.logical_and(pos >= -1.0, pos <= ext)
  pos = tf.maximum(pos, 0.0)
  lo = tf.floor(pos)
  at_edge = lo >= ext - 1.0
  lo = tf.where(at_edge, ext - 1.0, lo)
  pos = tf.where(at_edge, lo, pos)
  hi = tf.where(at_edge, lo, lo + 1.0)
  frac = pos - lo
  valid = tf.cast(valid, tf.float32) * used
  return (tf.cast(lo, tf.int32), tf.cast(hi, tf.int32), (1.0 - frac) * valid, frac * valid)


def roi_align_flat(flat_features,
                   offsets,
                   heights,
                   widths,
                   scales,
                   boxes,
                   output_size,
                   sampling_ratio,
                   aligned,
                   max_adaptive_samples: int = MAX_ADAPTIVE_SAMPLES):
  """Core RoIAlign over a flattened feature tensor.

  Args:
    flat_features: [B, L, C] concatenation of one or more [B, H_l, W_l, C] maps.
    offsets, heights, widths, scales: [B, N] per-box flat offset of its map, its map size and
      its spatial scale (feature pixels per image pixel).
    boxes: [B, N, 4] float [y1, x1, y2, x2] in image pixels.
    sampling_ratio: samples per bin per axis; 0 = adaptive (see the module docstring).
  Returns:
    [B, N, output_size, output_size, C], the dtype of `flat_features`.
  """
  if sampling_ratio < 0 or (sampling_ratio == 0 and max_adaptive_samples < 1):
    raise ValueError(f"sampling_ratio must be > 0, or 0 (adaptive) with max_adaptive_samples "
                     f">= 1; got {sampling_ratio} and {max_adaptive_samples}")
  out = output_size
  boxes = tf.cast(boxes, tf.float32)
  shift = 0.5 if aligned else 0.0
  y1 = boxes[..., 0] * scales - shift
  x1 = boxes[..., 1] * scales - shift
  h = (boxes[..., 2] - boxes[..., 0]) * scales
  w = (boxes[..., 3] - boxes[..., 1]) * scales
  if not aligned:  # legacy Mask R-CNN: RoIs at least one feature cell.
    h, w = tf.maximum(h, 1.0), tf.maximum(w, 1.0)
  hf, wf = tf.cast(heights, tf.float32), tf.cast(widths, tf.float32)
  if sampling_ratio > 0:
    sr, count_y, count_x = sampling_ratio, None, None
  else:  # torchvision: ceil(roi size / bins) samples per bin, here at most sr
    sr = max_adaptive_samples
    count_y = tf.clip_by_value(tf.math.ceil(h / out), 0.0, float(sr))
    count_x = tf.clip_by_value(tf.math.ceil(w / out), 0.0, float(sr))
  y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, h, hf, out, sr, count_y)
  x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, w, wf, out, sr, count_x)

  b, n = tf.shape(boxes)[0], tf.shape(boxes)[1]
  s = out * sr
  c = flat_features.shape[-1]
  base = offsets[..., None, None]  # [B, N, 1, 1]
  row_w = widths[..., None, None]
  feats32 = tf.cast(flat_features, tf.float32)
  result = 0.0
  for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
    for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
      idx = base + yi[..., :, None] * row_w + xi[..., None, :]  # [B, N, S, S]
      vals = tf.gather(feats32, tf.reshape(idx, [b, -1]), batch_dims=1)
      vals = tf.reshape(vals, [b, n, s, s, c])
      result += vals * (wy[..., :, None] * wx[..., None, :])[..., None]
  # Bin averages as an sr x sr average pool: much faster on CPU (forward and gradient) than
  # a mean over two non-adjacent axes of [B, N, out, sr, out, sr, C].
  result = tf.nn.avg_pool2d(tf.reshape(result, [b * n, s, s, c]), sr, sr, "VALID")
  result = tf.reshape(result, [b, n, out, out, c])
  if count_y is not None:  # the pool divided by sr^2; the bins hold count_y * count_x samples
    taken = tf.maximum(count_y * count_x, 1.0)
    result *= (float(sr * sr) / taken)[..., None, None, None]
  return tf.cast(result, flat_features.dtype)


def roi_align(features,
              boxes,
              output_size: int,
              spatial_scale: float,
              sampling_ratio: int = 2,
              aligned: bool = True,
              max_adaptive_samples: int = MAX_ADAPTIVE_SAMPLES):
  """RoIAlign on one feature map.

  Args:
    features: [B, H, W, C] float feature map.
    boxes: [B, N, 4] [y1, x1, y2, x2] in input-image pixels.
    output_size: output bins per side.
    spatial_scale: feature pixels per image pixel (1 / stride).
    sampling_ratio: samples per bin per axis; 0 = adaptive (torchvision's ceil(roi / bins)).
    aligned: pixel-center alignment (detectron2 ROIAlignV2).
  Returns:
    [B, N, output_size, output_size, C].
  """
  shape = tf.shape(features)
  b, h, w = shape[0], shape[1], shape[2]
  n = tf.shape(boxes)[1]
  flat = tf.reshape(features, [b, -1, features.shape[-1]])
  full = lambda v: tf.fill([b, n], v)
  scale = full(tf.constant(spatial_scale, tf.float32))
  return roi_align_flat(flat, full(0), full(h), full(w), scale, boxes, output_size, sampling_ratio,
                        aligned, max_adaptive_samples)


def assign_levels(boxes,
                  min_level: int,
                  max_level: int,
                  log_epsilon: Optional[float] = None,
                  box_plus_one: float = 0.0):
  """The FPN level of each box (FPN paper, eq. 1; canonical size 224 at level 4), clipped.

  `log_epsilon=None`: floor(4 + log2(sqrt(area) / 224) + 1e-6), this project's rule;
  a number e: floor(4 + log2(sqrt(area) / 224 + e)), detectron2's (e = 1e-8,
  `poolers.assign_boxes_to_levels`) and Detectron's (e = 1e-6, `FPN.map_rois_to_fpn_levels`).
  The rules differ only for boxes within ~1e-6 of a level boundary. `box_plus_one=1`: areas
  with Detectron's "+1" widths.

  Args:
    boxes: [..., 4] [y1, x1, y2, x2] in image pixels.
  Returns:
    [...] int32 levels in [min_level, max_level].
  """
  boxes = tf.cast(boxes, tf.float32)
  area = tf.maximum((boxes[..., 2] - boxes[..., 0] + box_plus_one) *
                    (boxes[..., 3] - boxes[..., 1] + box_plus_one), 1e-8)
  ratio = tf.sqrt(area) / CANONICAL_BOX_SIZE
  if log_epsilon is None:
    level = tf.floor(CANONICAL_LEVEL + tf.math.log(ratio) / math.log(2.0) + 1e-6)
  else:
    level = tf.floor(CANONICAL_LEVEL + tf.math.log(ratio + log_epsilon) / math.log(2.0))
  return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def roi_chunk(batch: int, num_boxes: int, samples: int, channels: int, max_bytes: int) -> int:
  """The largest divisor of `num_boxes` whose float32 sample tensor [batch, chunk, samples,
  samples, channels] fits in `max_bytes` (at least 1)."""
  per_box = batch * samples * samples * channels * 4
  fits = [d for d in range(1, num_boxes + 1) if num_boxes % d == 0 and d * per_box <= max_bytes]
  return max(fits, default=1)


def multilevel_roi_align(features: Dict[int, tf.Tensor],
                         boxes,
                         output_size: int,
                         sampling_ratio: int = 2,
                         aligned: bool = True,
                         max_chunk_bytes: Optional[int] = None,
                         level_epsilon: Optional[float] = None,
                         box_plus_one: float = 0.0,
                         max_adaptive_samples: int = MAX_ADAPTIVE_SAMPLES):
  """RoIAlign over an FPN, each box pooled from its level (`assign_levels`).

  Args:
    features: dict level -> [B, H_l, W_l, C], level l has stride 2**l.
    boxes: [B, N, 4] [y1, x1, y2, x2] in input-image pixels.
    sampling_ratio: samples per bin per axis; 0 = adaptive, at most `max_adaptive_samples`.
    max_chunk_bytes: when the bilinear samples of all N boxes ([B, N, S, S, C] float32, S =
      output_size * sampling_ratio, several such tensors live at once) would exceed this, the
      boxes are pooled in equal chunks by a loop (same result; peak memory bounded). For
      inference: at 1000 proposals the samples are 0.4 GB per tensor at batch 2. The loop's
      gradient is slower, so training leaves it unset.
    level_epsilon, box_plus_one: the level rule (`assign_levels`).
  Returns:
    [B, N, output_size, output_size, C].
  """
  levels = sorted(int(k) for k in features)
  maps = [features[l] for l in levels]
  bd = tf.shape(maps[0])[0]
  c = maps[0].shape[-1]
  # All levels in one [B, sum(H*W), C] tensor, built once (also when the boxes are chunked:
  # re-concatenating it per chunk cost 4% of an R50-FPN inference at 512 px).
  flats, offsets, hs, ws = [], [], [], []
  offset = 0
  for m in maps:
    h, w = tf.shape(m)[1], tf.shape(m)[2]
    flats.append(tf.reshape(m, [bd, -1, c]))
    offsets.append(offset)
    hs.append(h)
    ws.append(w)
    offset = offset + h * w
  flat = tf.concat(flats, axis=1)
  level_scales = tf.constant([2.0**-l for l in levels], tf.float32)

  def pool(part):
    lvl = assign_levels(part, levels[0], levels[-1], level_epsilon, box_plus_one) - levels[0]
    pick = lambda vals: tf.gather(tf.stack(vals), lvl)
    return roi_align_flat(flat, pick(offsets), pick(hs), pick(ws), tf.gather(level_scales, lvl),
                          part, output_size, sampling_ratio, aligned, max_adaptive_samples)

  b, n = boxes.shape[0], boxes.shape[1]
  if max_chunk_bytes and n is not None:
    slots = sampling_ratio or max_adaptive_samples
    # A batch known only at run time (a served model, evaluation on any canvas): the budget
    # holds per image.
    chunk = roi_chunk(b or 1, n, output_size * slots, c, max_chunk_bytes)
    if chunk < n:
      parts = tf.transpose(tf.reshape(boxes, [-1, n // chunk, chunk, 4]), [1, 0, 2, 3])
      pooled = tf.map_fn(pool,
                         parts,
                         fn_output_signature=tf.TensorSpec([b, chunk, output_size, output_size, c],
                                                           maps[0].dtype))
      return tf.reshape(tf.transpose(pooled, [1, 0, 2, 3, 4, 5]),
                        [-1, n, output_size, output_size, c])
  return pool(boxes)
