"""Fast R-CNN training targets: match proposals to GT, sample a fixed number of RoIs per image,
encode class-specific box targets. All static-shape (the branches crop their own targets).
"""

import tensorflow as tf

from rethink_tf.layers import box_ops

ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Detectron BBOX_REG_WEIGHTS


def sample_rois(proposals,
                proposal_valid,
                gt_boxes,
                gt_classes,
                gt_valid,
                crowd_boxes,
                crowd_valid,
                num_samples: int = 512,
                positive_fraction: float = 0.25,
                fg_iou: float = 0.5,
                crowd_ioa: float = 0.7,
                seeds=None,
                box_weights=ROI_BOX_WEIGHTS):
  """Samples RoIs: GT boxes join the proposals; fg IoU >= fg_iou, bg IoU < fg_iou.

  Args:
    proposals: [B, P, 4]; proposal_valid: [B, P] bool.
    gt_boxes: [B, M, 4]; gt_classes: [B, M] int (1..K-1); gt_valid: [B, M] bool.
    crowd_boxes: [B, C, 4]; crowd_valid [B, C]: RoIs inside crowd regions are not sampled.
    seeds: optional [B, 2] int stateless seeds, one per image (static B); without them the
      sampling draws from TF's global random state.
    box_weights: the box coding's (wy, wx, wh, ww) (a multi-stage box head's first stage may
      differ).
  Returns dict:
    rois [B, S, 4]; classes [B, S] int32 (0 = background); box_targets [B, S, 4];
    weights [B, S] float (1 for sampled slots); is_fg [B, S] bool; gt_index [B, S] int32.
    Foreground RoIs come first, so the first `num_samples * positive_fraction` slots hold
    every foreground RoI (the branches' RoIs).
  """
  boxes = tf.concat([proposals, gt_boxes], axis=1)
  valid = tf.concat([proposal_valid, gt_valid], axis=1)
  iou = box_ops.pairwise_iou(boxes, gt_boxes)
  iou = tf.where(gt_valid[:, None, :], iou, -1.0)
  max_iou = tf.reduce_max(iou, axis=2)
  matched = tf.argmax(iou, axis=2, output_type=tf.int32)
  ioa = box_ops.intersection_over_first(boxes, crowd_boxes)
  near_crowd = tf.reduce_any(tf.logical_and(ioa > crowd_ioa, crowd_valid[:, None, :]), axis=2)
  fg = tf.logical_and(valid, max_iou >= fg_iou)
  bg = tf.logical_and(tf.logical_and(valid, max_iou < fg_iou), tf.logical_not(near_crowd))

  num_fg_max = int(num_samples * positive_fraction)
  noise = _per_image_uniform(seeds, max_iou)
  # Rank foreground by noise to keep at most num_fg_max of them.
  fg_prio = tf.where(fg, noise, -1.0)
  fg_vals, fg_idx = tf.math.top_k(fg_prio, k=num_fg_max)
  fg_keep = tf.cast(fg_vals >= 0.0, tf.float32)
  fg_selected = tf.reduce_max(tf.one_hot(fg_idx, tf.shape(fg)[1]) * fg_keep[..., None], axis=1) > 0
  prio = tf.where(fg_selected, 3.0 + noise, tf.where(bg, 1.0 + noise, -1.0))
  vals, idx = tf.math.top_k(prio, k=num_samples)
  is_fg = vals >= 3.0
  weights = tf.cast(vals >= 1.0, tf.float32)
  rois = tf.gather(boxes, idx, batch_dims=1)
  gt_index = tf.gather(matched, idx, batch_dims=1)
  classes = tf.where(is_fg, tf.gather(gt_classes, gt_index, batch_dims=1), 0)
  matched_boxes = tf.gather(gt_boxes, gt_index, batch_dims=1)
  targets = box_ops.encode_boxes(matched_boxes, rois, box_weights)
  targets = tf.where(is_fg[..., None], targets, 0.0)
  return dict(rois=tf.stop_gradient(rois),
              classes=tf.cast(classes, tf.int32),
              box_targets=tf.stop_gradient(targets),
              weights=weights,
              is_fg=is_fg,
              gt_index=gt_index)


def _per_image_uniform(seeds, like):
  """[B, N] uniform noise in [0, 1); image i's row depends on seeds[i] only (not on B or on
  the image's position in the batch).

  An integer hash rather than `stateless_uniform`: XLA's stateless RNG kernels give other
  numbers than TF's for the same seed, and the compiled step must sample the same RoIs as the
  plain one.
  """
  if seeds is None:
    return tf.random.uniform(tf.shape(like))
  mask = tf.constant(0xFFFFFFFF, tf.int64)
  seeds = tf.cast(seeds, tf.int64) & mask  # [B, 2]
  x = tf.range(like.shape[1], dtype=tf.int64)[None, :] * 0x7FEB352D  # products < 2**63
  x = (x + seeds[:, :1] * 0x68E31DA4 + seeds[:, 1:]) & mask
  for shift, mult in ((16, 0x45D9F3B), (16, 0x45D9F3B), (16, None)):
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift))
    if mult:
      x = (x * mult) & mask
  return tf.cast(tf.bitwise.right_shift(x, 8), tf.float32) / float(1 << 24)
