"""Mask R-CNN / Faster R-CNN losses (Detectron normalizations).

All losses are means over one replica's batch; the trainer divides by the number of
replicas so that the all-reduced gradient is the global-batch mean.
"""

from typing import Dict

import tensorflow as tf

RPN_SMOOTH_L1_BETA = 1.0 / 9.0   # Detectron RPN
ROI_SMOOTH_L1_BETA = 1.0         # Detectron Fast R-CNN


def smooth_l1(diff, beta):
  a = tf.abs(diff)
  return tf.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def rpn_losses(rpn_scores, rpn_deltas, rpn_labels, rpn_box_targets):
  """Objectness BCE and box smooth-L1, both normalized by the number of sampled anchors.

  Args: rpn_scores [B, A]; rpn_deltas [B, A, 4]; rpn_labels [B, A] in {1, 0, -1};
    rpn_box_targets [B, A, 4].
  """
  rpn_scores = tf.cast(rpn_scores, tf.float32)
  sampled = tf.cast(rpn_labels >= 0, tf.float32)
  norm = tf.maximum(tf.reduce_sum(sampled), 1.0)
  labels = tf.cast(rpn_labels > 0, tf.float32)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=rpn_scores)
  cls_loss = tf.reduce_sum(bce * sampled) / norm
  box = smooth_l1(tf.cast(rpn_deltas, tf.float32) - rpn_box_targets, RPN_SMOOTH_L1_BETA)
  box_loss = tf.reduce_sum(tf.reduce_sum(box, -1) * labels) / norm
  return cls_loss, box_loss


def fast_rcnn_losses(class_logits, box_deltas, roi_classes, roi_box_targets, roi_weights):
  """Softmax CE over sampled RoIs; class-specific smooth-L1 on foreground, / sampled RoIs.

  Args: class_logits [B, S, K]; box_deltas [B, S, K, 4]; roi_classes [B, S];
    roi_box_targets [B, S, 4]; roi_weights [B, S].
  """
  norm = tf.maximum(tf.reduce_sum(roi_weights), 1.0)
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=roi_classes, logits=tf.cast(class_logits, tf.float32))
  cls_loss = tf.reduce_sum(ce * roi_weights) / norm
  deltas = tf.gather(tf.cast(box_deltas, tf.float32), roi_classes, axis=2, batch_dims=2)
  fg = tf.cast(roi_classes > 0, tf.float32) * roi_weights
  box = tf.reduce_sum(smooth_l1(deltas - roi_box_targets, ROI_SMOOTH_L1_BETA), -1)
  box_loss = tf.reduce_sum(box * fg) / norm
  return cls_loss, box_loss


def mask_loss(mask_logits, mask_targets, mask_weights):
  """Per-pixel BCE on the GT-class mask, mean over foreground RoIs and pixels.

  Args: mask_logits [B, R, M, M]; mask_targets [B, R, M, M]; mask_weights [B, R].
  """
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets,
                                                logits=tf.cast(mask_logits, tf.float32))
  per_roi = tf.reduce_mean(bce, axis=[2, 3])
  return tf.reduce_sum(per_roi * mask_weights) / tf.maximum(tf.reduce_sum(mask_weights), 1.0)


def mask_rcnn_losses(outputs: Dict[str, tf.Tensor], batch: Dict[str, tf.Tensor]):
  """Every loss term by name plus their sum under "total_loss" (weight decay excluded)."""
  rpn_cls, rpn_box = rpn_losses(outputs["rpn_scores"], outputs["rpn_deltas"],
                                batch["rpn_labels"], batch["rpn_box_targets"])
  cls, box = fast_rcnn_losses(outputs["class_logits"], outputs["box_deltas"],
                              outputs["roi_classes"], outputs["roi_box_targets"],
                              outputs["roi_weights"])
  losses = dict(rpn_cls_loss=rpn_cls, rpn_box_loss=rpn_box, fast_rcnn_cls_loss=cls,
                fast_rcnn_box_loss=box)
  if "mask_logits" in outputs:  # Faster R-CNN models have no mask branch
    losses["mask_loss"] = mask_loss(outputs["mask_logits"], outputs["mask_targets"],
                                    outputs["mask_weights"])
  losses["total_loss"] = tf.add_n(list(losses.values()))
  return losses
