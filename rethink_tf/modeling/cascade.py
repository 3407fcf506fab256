"""Cascade R-CNN (Cai and Vasconcelos, CVPR 2018) as detectron2's `CascadeROIHeads` runs it.

Box heads run in sequence: stage k pools the boxes stage k-1 regressed, is trained at a higher
foreground IoU on them, and regresses them again with tighter box-coding weights. Later stages
re-label the same RoIs (no new sampling), so every stage has the static RoI count of stage 1.
At inference the class scores of all stages are averaged and the boxes are the last stage's.
"""

import tensorflow as tf

from rethink_tf.layers import box_ops

CASCADE_IOUS = (0.5, 0.6, 0.7)
# Stage-specific box-coding weights (wy, wx, wh, ww): deltas of better-localized boxes are
# smaller, larger weights keep the regression targets at unit scale.
CASCADE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                       (30.0, 30.0, 15.0, 15.0))


def refine_boxes(rois, box_deltas, box_weights, image_size):
  """Applies class-agnostic deltas: rois [B, N, 4], box_deltas [B, N, 1, 4] -> [B, N, 4]
  clipped to image_size [B, 2]. No gradient flows into the next stage's boxes."""
  boxes = box_ops.decode_boxes(tf.cast(box_deltas[:, :, 0], tf.float32), rois, box_weights)
  boxes = box_ops.clip_boxes(boxes, tf.cast(image_size, tf.float32)[:, None, :])
  return tf.stop_gradient(boxes)


def label_boxes(rois, roi_weights, gt_boxes, gt_classes, gt_valid, fg_iou: float,
                box_weights):
  """Targets of a later stage for all of its RoIs.

  Args:
    rois: [B, S, 4] the previous stage's regressed boxes; roi_weights: [B, S] (1: a sampled
      slot of stage 1).
    gt_boxes: [B, M, 4]; gt_classes: [B, M] int; gt_valid: [B, M] bool.
    fg_iou: this stage's foreground IoU (RoIs below it are background).
  Returns dict: classes [B, S] int32 (0 = background), box_targets [B, S, 4] (zero for
    background), weights [B, S] (= roi_weights), is_fg [B, S] bool.
  """
  iou = box_ops.pairwise_iou(rois, gt_boxes)
  iou = tf.where(gt_valid[:, None, :], iou, -1.0)
  matched = tf.argmax(iou, axis=2, output_type=tf.int32)
  is_fg = tf.logical_and(tf.reduce_max(iou, axis=2) >= fg_iou, roi_weights > 0)
  classes = tf.where(is_fg, tf.gather(gt_classes, matched, batch_dims=1), 0)
  targets = box_ops.encode_boxes(tf.gather(gt_boxes, matched, batch_dims=1), rois, box_weights)
  targets = tf.where(is_fg[..., None], targets, 0.0)
  return dict(classes=tf.cast(classes, tf.int32), box_targets=tf.stop_gradient(targets),
              weights=roi_weights, is_fg=is_fg)


def scale_gradient(x, scale: float):
  """Identity forward; the gradient is multiplied by `scale` (detectron2 scales each stage's
  pooled features by 1 / num_stages, so the shared FPN sees the stages' mean)."""
  scale = tf.cast(scale, x.dtype)
  return x * scale + tf.stop_gradient(x) * (1.0 - scale)
