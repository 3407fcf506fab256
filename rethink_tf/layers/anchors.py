"""Anchors and RPN training targets (Detectron/detectron2 rules).

Anchors come from Model Garden's `Anchor`: on an FPN one scale per level and 3 aspect ratios,
size `anchor_size * stride`, i.e. 32..512 px on P2..P6 with anchor_size 8. Without FPN
(the original Faster R-CNN on conv5, stride 16) one level carries several sizes:
`anchor_scales=(1, 2, 4, 8, 16)` with anchor_size 2 gives Detectron's 32..512 px. The
per-image labeler runs inside tf.data, with stateless randomness so a seeded pipeline is
reproducible.
"""

from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from rethink_tf.layers import box_ops

RPN_BOX_WEIGHTS = None  # Detectron RPN uses unit weights for (dy, dx, dh, dw).


def multilevel_anchors(image_size: Sequence[int],
                       min_level: int = 2,
                       max_level: int = 6,
                       aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                       anchor_size: float = 8.0,
                       anchor_scales: Sequence[float] = (1.0,),
                       offset: float = 0.5,
                       detectron_rounding: bool = False) -> Dict[int, tf.Tensor]:
  """Anchors per level of a canvas of `image_size`, dict level -> [H_l * W_l * A, 4] float32
  [y1, x1, y2, x2] pixels, H_l = ceil(H / 2^l) (the feature map's size).

  A = len(anchor_scales) * len(aspect_ratios); anchor sizes are
  `anchor_size * scale * stride`; an aspect ratio is width / height (Model Garden's; detectron2
  and Detectron use height / width, so their (0.5, 1, 2) is our (2, 1, 0.5) in that order).
  The order within a level is (row, column, scale, ratio), the order of the RPN head's outputs.
  Cell (i, j) centres its anchors at ((i + offset) * stride, (j + offset) * stride): 0.5 is
  Model Garden's and this project's default, detectron2's `ANCHOR_GENERATOR.OFFSET` is 0.0.
  `detectron_rounding`: Detectron's `generate_anchors` (integer widths and heights, inclusive
  "+1" coordinates, centred at (stride - 1) / 2; `offset` is then unused).
  """
  shapes = {
      level: (-(-int(image_size[0]) // 2**level), -(-int(image_size[1]) // 2**level))
      for level in range(min_level, max_level + 1)
  }
  return grid_anchors(shapes, aspect_ratios, anchor_size, anchor_scales, offset, detectron_rounding)


def grid_anchors(level_shapes: Dict[int, Tuple],
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 anchor_size: float = 8.0,
                 anchor_scales: Sequence[float] = (1.0,),
                 offset: float = 0.5,
                 detectron_rounding: bool = False) -> Dict[int, tf.Tensor]:
  """`multilevel_anchors` for feature maps of the given sizes: {level: (H_l, W_l)}, Python ints
  or int32 scalar tensors (a canvas whose size is known only when the graph runs).

  The stride of level l is 2^l whatever the canvas, as detectron2's and Detectron's generators
  (Model Garden's `Anchor` stretches it to canvas / H_l when the canvas is not a multiple of
  2^l; on multiples, which are all this project's fixed canvases, the values are identical:
  centres (i + 0.5) * stride and half sizes in float32, then the offset).
  """
  out = {}
  for level, (h, w) in level_shapes.items():
    stride = 2**int(level)
    if detectron_rounding:
      # Detectron orders a cell's anchors ratio-major; ours (and the RPN head's channels for
      # converted weights) scale-major, so build one size at a time.
      cells = np.stack([
          detectron_cell_anchors(stride, [anchor_size * s * stride],
                                 [1.0 / r for r in aspect_ratios]) for s in anchor_scales
      ],
                       axis=0)  # [S, R, 4] xyxy
      cells = tf.constant(cells.reshape(-1, 4)[:, [1, 0, 3, 2]], tf.float64)  # yxyx
      ys = tf.cast(tf.range(h), tf.float64) * stride
      xs = tf.cast(tf.range(w), tf.float64) * stride
      ys, xs = tf.meshgrid(ys, xs, indexing="ij")
      shifts = tf.stack([ys, xs, ys, xs], axis=-1)[:, :, None, :]
      out[int(level)] = tf.cast(tf.reshape(shifts + cells, [-1, 4]), tf.float32)
      continue
    halves = []  # (half height, half width) per (scale, ratio), as Model Garden computes them
    for s in anchor_scales:
      for r in aspect_ratios:
        base = anchor_size * s * stride
        halves.append((base * r**-0.5 / 2.0, base * r**0.5 / 2.0))
    half = tf.constant(halves, tf.float32)  # [A, 2]
    cy = tf.cast(tf.range(h), tf.float32) * float(stride) + stride / 2.0
    cx = tf.cast(tf.range(w), tf.float32) * float(stride) + stride / 2.0
    cy, cx = tf.meshgrid(cy, cx, indexing="ij")
    cy, cx = cy[:, :, None], cx[:, :, None]
    boxes = tf.stack([cy - half[:, 0], cx - half[:, 1], cy + half[:, 0], cx + half[:, 1]], -1)
    out[int(level)] = tf.reshape(boxes, [-1, 4]) + (offset - 0.5) * float(stride)
  return out


def detectron_cell_anchors(stride: int, sizes: Sequence[float],
                           aspect_ratios: Sequence[float]) -> np.ndarray:
  """Detectron's cell anchors [len(ratios) * len(sizes), 4] (x1, y1, x2, y2), inclusive.

  `modeling/generate_anchors.py`: a stride x stride base box [0, 0, stride - 1, stride - 1];
  per ratio (height / width) w = round(sqrt(stride^2 / ratio)), h = round(w * ratio); each
  scaled by size / stride about the centre (stride - 1) / 2. Order: ratio-major, then size.
  """
  ctr = 0.5 * (stride - 1)

  def boxes(ws, hs):
    return np.stack(
        [ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)],
        axis=-1)

  ratios = np.asarray(aspect_ratios, np.float64)
  ws = np.round(np.sqrt(stride * stride / ratios))
  hs = np.round(ws * ratios)
  scales = np.asarray(sizes, np.float64) / stride
  return np.concatenate([boxes(w * scales, h * scales) for w, h in zip(ws, hs)], axis=0)


def rpn_targets(anchors,
                gt_boxes,
                gt_valid,
                crowd_boxes,
                crowd_valid,
                seed,
                batch_size_per_image: int = 256,
                positive_fraction: float = 0.5,
                positive_iou: float = 0.7,
                negative_iou: float = 0.3,
                crowd_ioa: float = 0.7) -> Tuple[tf.Tensor, tf.Tensor]:
  """Labels and regression targets for one image.

  Args:
    anchors: [A, 4] float32 anchors (all levels concatenated).
    gt_boxes: [M, 4] float32 padded ground truth; gt_valid: [M] bool.
    crowd_boxes: [C, 4] crowd regions (ignored, never matched); crowd_valid: [C] bool.
    seed: [2] int stateless seed for sampling.
  Returns:
    labels: [A] int32, 1 positive / 0 negative / -1 ignored (not sampled or near crowd).
    box_targets: [A, 4] float32 encoded deltas w.r.t. the anchor (0 where not positive).
  """
  iou = box_ops.pairwise_iou(anchors[None], gt_boxes[None])[0]  # [A, M]
  iou = tf.where(gt_valid[None, :], iou, -1.0)
  max_iou = tf.reduce_max(iou, axis=1)
  matched = tf.argmax(iou, axis=1, output_type=tf.int32)
  # Low-quality matches: every GT keeps the anchors with its highest IoU (ties included).
  best_per_gt = tf.reduce_max(iou, axis=0)  # [M]
  is_best = tf.logical_and(tf.equal(iou, best_per_gt[None, :]),
                           tf.logical_and(gt_valid[None, :], best_per_gt[None, :] > 0.0))
  positive = tf.logical_or(max_iou >= positive_iou, tf.reduce_any(is_best, axis=1))
  negative = tf.logical_and(max_iou < negative_iou, max_iou >= 0.0)
  negative = tf.logical_or(negative, tf.logical_and(max_iou < 0.0, tf.logical_not(positive)))
  negative = tf.logical_and(negative, tf.logical_not(positive))
  ioa = box_ops.intersection_over_first(anchors[None], crowd_boxes[None])[0]  # [A, C]
  near_crowd = tf.reduce_any(tf.logical_and(ioa > crowd_ioa, crowd_valid[None, :]), axis=1)
  negative = tf.logical_and(negative, tf.logical_not(near_crowd))

  num_pos_max = int(batch_size_per_image * positive_fraction)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  pos_sel = _sample(positive, num_pos_max, seeds[0])
  num_pos = tf.reduce_sum(tf.cast(pos_sel, tf.int32))
  neg_sel = _sample(negative,
                    batch_size_per_image - num_pos,
                    seeds[1],
                    static_max=batch_size_per_image)
  labels = tf.where(pos_sel, 1, tf.where(neg_sel, 0, -1))
  # Only the sampled positives (at most batch_size_per_image * positive_fraction) are encoded:
  # encoding all A anchors cost more than the rest of the labelling.
  pos = tf.where(pos_sel)[:, 0]
  encoded = box_ops.encode_boxes(tf.gather(gt_boxes, tf.gather(matched, pos)),
                                 tf.gather(anchors, pos), RPN_BOX_WEIGHTS)
  targets = tf.scatter_nd(pos[:, None], encoded, tf.shape(anchors, out_type=tf.int64))
  return tf.cast(labels, tf.int32), targets


def _sample(candidates, count, seed, static_max=None):
  """Uniformly picks up to `count` True entries of [A] bool `candidates` -> [A] bool."""
  k = static_max if static_max is not None else count
  k = min(k, candidates.shape[0])  # fewer anchors than the sample size (tiny images)
  noise = tf.random.stateless_uniform(tf.shape(candidates), seed)
  priority = tf.where(candidates, noise, -1.0)
  values, idx = tf.math.top_k(priority, k=k)
  keep = tf.logical_and(values >= 0.0, tf.range(k) < count)
  return tf.scatter_nd(idx[:, None], keep, tf.shape(candidates))
