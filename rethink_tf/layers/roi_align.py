"""RoIAlign (He et al. 2017) for NHWC features and [y1, x1, y2, x2] boxes in image pixels.

Matches torchvision/detectron2 `roi_align` bin for bin: each output bin is the mean of
`sampling_ratio**2` bilinear samples taken at `y = y1 + (i + (iy + 0.5) / sr) * bin_h`; with
`aligned=True` the box is shifted by -0.5 feature pixel (detectron2 ROIAlignV2). Samples more
than one pixel outside the map are 0; samples in (-1, 0] are clamped to the edge. Unlike
`tf.image.crop_and_resize` (which samples at corners) this is the Detectron op.

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


def _axis_samples(start, size, extent, out, sr):
  """Sample coordinates along one axis and their bilinear corners/weights.

  Args:
    start, size: [B, N] box start and size in feature pixels.
    extent: [B, N] feature-map size along this axis (float).
    out, sr: output bins and samples per bin.
  Returns:
    lo, hi: [B, N, S] int32 corner indices; w_lo, w_hi: [B, N, S] weights (0 outside the map).
  """
  bin_size = size / out
  grid = (tf.range(out * sr, dtype=tf.float32) + 0.5) / sr  # in bins, [S]
  pos = start[..., None] + grid * bin_size[..., None]        # [B, N, S]
  ext = extent[..., None]
  valid = tf.logical_and(pos >= -1.0, pos <= ext)
  pos = tf.maximum(pos, 0.0)
  lo = tf.floor(pos)
  at_edge = lo >= ext - 1.0
  lo = tf.where(at_edge, ext - 1.0, lo)
  pos = tf.where(at_edge, lo, pos)
  hi = tf.where(at_edge, lo, lo + 1.0)
  frac = pos - lo
  valid = tf.cast(valid, tf.float32)
  return (tf.cast(lo, tf.int32), tf.cast(hi, tf.int32), (1.0 - frac) * valid, frac * valid)


def roi_align_flat(flat_features, offsets, heights, widths, scales, boxes, output_size,
                    sampling_ratio, aligned):
  """Core RoIAlign over a flattened feature tensor.

  Args:
    flat_features: [B, L, C] concatenation of one or more [B, H_l, W_l, C] maps.
    offsets, heights, widths, scales: [B, N] per-box flat offset of its map, its map size and
      its spatial scale (feature pixels per image pixel).
    boxes: [B, N, 4] float [y1, x1, y2, x2] in image pixels.
  Returns:
    [B, N, output_size, output_size, C], the dtype of `flat_features`.
  """
  if sampling_ratio <= 0:
    raise ValueError("sampling_ratio must be > 0 (adaptive sampling is not static-shape).")
  out, sr = output_size, sampling_ratio
  boxes = tf.cast(boxes, tf.float32)
  shift = 0.5 if aligned else 0.0
  y1 = boxes[..., 0] * scales - shift
  x1 = boxes[..., 1] * scales - shift
  h = (boxes[..., 2] - boxes[..., 0]) * scales
  w = (boxes[..., 3] - boxes[..., 1]) * scales
  if not aligned:  # legacy Mask R-CNN: RoIs at least one feature cell.
    h, w = tf.maximum(h, 1.0), tf.maximum(w, 1.0)
  hf, wf = tf.cast(heights, tf.float32), tf.cast(widths, tf.float32)
  y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, h, hf, out, sr)
  x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, w, wf, out, sr)

  b, n = tf.shape(boxes)[0], tf.shape(boxes)[1]
  s = out * sr
  c = flat_features.shape[-1]
  base = offsets[..., None, None]           # [B, N, 1, 1]
  row_w = widths[..., None, None]
  feats32 = tf.cast(flat_features, tf.float32)
  result = 0.0
  for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
    for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
      idx = base + yi[..., :, None] * row_w + xi[..., None, :]   # [B, N, S, S]
      vals = tf.gather(feats32, tf.reshape(idx, [b, -1]), batch_dims=1)
      vals = tf.reshape(vals, [b, n, s, s, c])
      result += vals * (wy[..., :, None] * wx[..., None, :])[..., None]
  # Bin averages as an sr x sr average pool: much faster on CPU (forward and gradient) than
  # a mean over two non-adjacent axes of [B, N, out, sr, out, sr, C].
  result = tf.nn.avg_pool2d(tf.reshape(result, [b * n, s, s, c]), sr, sr, "VALID")
  return tf.cast(tf.reshape(result, [b, n, out, out, c]), flat_features.dtype)


def roi_align(features, boxes, output_size: int, spatial_scale: float, sampling_ratio: int = 2,
              aligned: bool = True):
  """RoIAlign on one feature map.

  Args:
    features: [B, H, W, C] float feature map.
    boxes: [B, N, 4] [y1, x1, y2, x2] in input-image pixels.
    output_size: output bins per side.
    spatial_scale: feature pixels per image pixel (1 / stride).
    sampling_ratio: samples per bin per axis (> 0).
    aligned: pixel-center alignment (detectron2 ROIAlignV2).
  Returns:
    [B, N, output_size, output_size, C].
  """
  shape = tf.shape(features)
  b, h, w = shape[0], shape[1], shape[2]
  n = tf.shape(boxes)[1]
  flat = tf.reshape(features, [b, -1, features.shape[-1]])
  full = lambda v: tf.fill([b, n], v)
  return roi_align_flat(flat, full(0), full(h), full(w), full(tf.constant(spatial_scale, tf.float32)),
                         boxes, output_size, sampling_ratio, aligned)


def assign_levels(boxes, min_level: int, max_level: int):
  """Detectron's FPN level for each box: floor(4 + log2(sqrt(area) / 224)), clipped.

  Args:
    boxes: [..., 4] [y1, x1, y2, x2] in image pixels.
  Returns:
    [...] int32 levels in [min_level, max_level].
  """
  boxes = tf.cast(boxes, tf.float32)
  area = tf.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 1e-8)
  level = tf.floor(CANONICAL_LEVEL + tf.math.log(tf.sqrt(area) / CANONICAL_BOX_SIZE) / math.log(2.0)
                   + 1e-6)
  return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def roi_chunk(batch: int, num_boxes: int, samples: int, channels: int, max_bytes: int) -> int:
  """The largest divisor of `num_boxes` whose float32 sample tensor [batch, chunk, samples,
  samples, channels] fits in `max_bytes` (at least 1)."""
  per_box = batch * samples * samples * channels * 4
  fits = [d for d in range(1, num_boxes + 1) if num_boxes % d == 0 and d * per_box <= max_bytes]
  return max(fits, default=1)


def multilevel_roi_align(features: Dict[int, tf.Tensor], boxes, output_size: int,
                         sampling_ratio: int = 2, aligned: bool = True,
                         max_chunk_bytes: Optional[int] = None):
  """RoIAlign over an FPN, each box pooled from its Detectron level (canonical 224 at level 4).

  Args:
    features: dict level -> [B, H_l, W_l, C], level l has stride 2**l.
    boxes: [B, N, 4] [y1, x1, y2, x2] in input-image pixels.
    max_chunk_bytes: when the bilinear samples of all N boxes ([B, N, S, S, C] float32, S =
      output_size * sampling_ratio, several such tensors live at once) would exceed this, the
      boxes are pooled in equal chunks by a loop (same result; peak memory bounded). For
      inference: at 1000 proposals the samples are 0.4 GB per tensor at batch 2. The loop's
      gradient is slower, so training leaves it unset.
  Returns:
    [B, N, output_size, output_size, C].
  """
  b, n = boxes.shape[0], boxes.shape[1]
  c = next(iter(features.values())).shape[-1]
  if max_chunk_bytes and b is not None and n is not None:
    chunk = roi_chunk(b, n, output_size * sampling_ratio, c, max_chunk_bytes)
    if chunk < n:
      parts = tf.transpose(tf.reshape(boxes, [b, n // chunk, chunk, 4]), [1, 0, 2, 3])
      dtype = next(iter(features.values())).dtype
      pooled = tf.map_fn(
          lambda part: multilevel_roi_align(features, part, output_size, sampling_ratio,
                                            aligned),
          parts, fn_output_signature=tf.TensorSpec([b, chunk, output_size, output_size, c],
                                                   dtype))
      return tf.reshape(tf.transpose(pooled, [1, 0, 2, 3, 4, 5]),
                        [b, n, output_size, output_size, c])
  levels = sorted(int(k) for k in features)
  maps = [features[l] for l in levels]
  b = tf.shape(maps[0])[0]
  c = maps[0].shape[-1]
  flats, offsets, hs, ws = [], [], [], []
  offset = 0
  for m in maps:
    h, w = tf.shape(m)[1], tf.shape(m)[2]
    flats.append(tf.reshape(m, [b, -1, c]))
    offsets.append(offset)
    hs.append(h)
    ws.append(w)
    offset = offset + h * w
  flat = tf.concat(flats, axis=1)
  lvl = assign_levels(boxes, levels[0], levels[-1]) - levels[0]   # [B, N] index into levels
  pick = lambda vals: tf.gather(tf.stack(vals), lvl)
  scales = tf.gather(tf.constant([2.0 ** -l for l in levels], tf.float32), lvl)
  return roi_align_flat(flat, pick(offsets), pick(hs), pick(ws), scales, boxes, output_size,
                         sampling_ratio, aligned)
