"""Mask R-CNN / Faster R-CNN losses (Detectron normalizations).

Every loss is a sum over one replica's examples divided by a count over the *global* batch
(sampled anchors, sampled RoIs, foreground RoIs), summed over replicas by `global_sum`. The
replicas' losses (and gradients) then add up to the loss of the whole batch on one device,
whatever the split: 2 replicas x 1 image train exactly as 1 replica x 2 images.
"""

from typing import Callable, Dict, List, Optional

import tensorflow as tf

from rethink_tf.modeling import keypoints as keypoint_lib

Reducer = Optional[Callable[[tf.Tensor], tf.Tensor]]


def _normalizer(count, global_sum: Reducer):
  count = tf.stop_gradient(count)
  if global_sum is not None:
    count = global_sum(count)
  return tf.maximum(count, 1.0)


RPN_SMOOTH_L1_BETA = 1.0 / 9.0  # Detectron RPN
ROI_SMOOTH_L1_BETA = 1.0  # Detectron Fast R-CNN


def smooth_l1(diff, beta):
  a = tf.abs(diff)
  return tf.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def rpn_losses(rpn_scores, rpn_deltas, rpn_labels, rpn_box_targets, global_sum: Reducer = None):
  """Objectness BCE and box smooth-L1, both normalized by the number of sampled anchors.

  Args: rpn_scores [B, A]; rpn_deltas [B, A, 4]; rpn_labels [B, A] in {1, 0, -1};
    rpn_box_targets [B, A, 4].
  """
  rpn_scores = tf.cast(rpn_scores, tf.float32)
  sampled = tf.cast(rpn_labels >= 0, tf.float32)
  norm = _normalizer(tf.reduce_sum(sampled), global_sum)
  labels = tf.cast(rpn_labels > 0, tf.float32)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=rpn_scores)
  cls_loss = tf.reduce_sum(bce * sampled) / norm
  box = smooth_l1(tf.cast(rpn_deltas, tf.float32) - rpn_box_targets, RPN_SMOOTH_L1_BETA)
  box_loss = tf.reduce_sum(tf.reduce_sum(box, -1) * labels) / norm
  return cls_loss, box_loss


def fast_rcnn_losses(class_logits,
                     box_deltas,
                     roi_classes,
                     roi_box_targets,
                     roi_weights,
                     global_sum: Reducer = None):
  """Softmax CE over sampled RoIs; class-specific smooth-L1 on foreground, / sampled RoIs.

  Args: class_logits [B, S, K]; box_deltas [B, S, K, 4] (or [B, S, 1, 4], class-agnostic);
    roi_classes [B, S];
    roi_box_targets [B, S, 4]; roi_weights [B, S].
  """
  norm = _normalizer(tf.reduce_sum(roi_weights), global_sum)
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=roi_classes,
                                                      logits=tf.cast(class_logits, tf.float32))
  cls_loss = tf.reduce_sum(ce * roi_weights) / norm
  if box_deltas.shape[2] == 1:  # class-agnostic (Cascade R-CNN)
    deltas = tf.cast(box_deltas[:, :, 0], tf.float32)
  else:
    deltas = tf.gather(tf.cast(box_deltas, tf.float32), roi_classes, axis=2, batch_dims=2)
  fg = tf.cast(roi_classes > 0, tf.float32) * roi_weights
  box = tf.reduce_sum(smooth_l1(deltas - roi_box_targets, ROI_SMOOTH_L1_BETA), -1)
  box_loss = tf.reduce_sum(box * fg) / norm
  return cls_loss, box_loss


def mask_loss(mask_logits, mask_targets, mask_weights, global_sum: Reducer = None):
  """Per-pixel BCE on the GT-class mask, mean over foreground RoIs and pixels.

  Args: mask_logits [B, R, M, M]; mask_targets [B, R, M, M]; mask_weights [B, R].
  """
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets,
                                                logits=tf.cast(mask_logits, tf.float32))
  per_roi = tf.reduce_mean(bce, axis=[2, 3])
  return tf.reduce_sum(per_roi * mask_weights) / _normalizer(tf.reduce_sum(mask_weights),
                                                             global_sum)


def loss_names(with_mask: bool, with_keypoints: bool = False, num_stages: int = 1) -> List[str]:
  """The keys of `mask_rcnn_losses`, in its order (the train loop's state needs them before
  the first step runs). Cascade R-CNN's stages 2..n add `fast_rcnn_*_loss_stage<k>`."""
  return (
      ["rpn_cls_loss", "rpn_box_loss", "fast_rcnn_cls_loss", "fast_rcnn_box_loss"] +
      [f"fast_rcnn_{t}_loss_stage{k}" for k in range(2, num_stages + 1) for t in ("cls", "box")] +
      (["mask_loss"] if with_mask else []) + (["keypoint_loss"] if with_keypoints else []) +
      ["total_loss"])


def mask_rcnn_losses(outputs: Dict[str, tf.Tensor],
                     batch: Dict[str, tf.Tensor],
                     global_sum: Reducer = None):
  """Every loss term by name plus their sum under "total_loss" (weight decay excluded).

  global_sum: sums a count over all replicas (None: this replica is the whole batch).
  """
  rpn_cls, rpn_box = rpn_losses(outputs["rpn_scores"], outputs["rpn_deltas"], batch["rpn_labels"],
                                batch["rpn_box_targets"], global_sum)
  cls, box = fast_rcnn_losses(outputs["class_logits"], outputs["box_deltas"],
                              outputs["roi_classes"], outputs["roi_box_targets"],
                              outputs["roi_weights"], global_sum)
  losses = dict(rpn_cls_loss=rpn_cls,
                rpn_box_loss=rpn_box,
                fast_rcnn_cls_loss=cls,
                fast_rcnn_box_loss=box)
  k = 2
  while f"class_logits_stage{k}" in outputs:  # Cascade R-CNN; zero until cascade_active
    cls, box = fast_rcnn_losses(*(outputs[f"{key}_stage{k}"]
                                  for key in ("class_logits", "box_deltas", "roi_classes",
                                              "roi_box_targets", "roi_weights")),
                                global_sum=global_sum)
    losses[f"fast_rcnn_cls_loss_stage{k}"] = cls * outputs["cascade_active"]
    losses[f"fast_rcnn_box_loss_stage{k}"] = box * outputs["cascade_active"]
    k += 1
  if "mask_logits" in outputs:  # Faster R-CNN models have no mask branch
    losses["mask_loss"] = mask_loss(outputs["mask_logits"], outputs["mask_targets"],
                                    outputs["mask_weights"], global_sum)
  if "keypoint_logits" in outputs:  # Keypoint R-CNN: normalized by the labeled keypoints
    logits, weights = outputs["keypoint_logits"], outputs["keypoint_weights"]
    s = tf.shape(logits)
    losses["keypoint_loss"] = keypoint_lib.keypoint_loss(
        tf.reshape(logits, tf.concat([[s[0] * s[1]], s[2:]], 0)),
        tf.reshape(outputs["keypoint_targets"], [s[0] * s[1], s[2]]),
        tf.reshape(weights, [s[0] * s[1], s[2]]), _normalizer(tf.reduce_sum(weights), global_sum))
  losses["total_loss"] = tf.add_n(list(losses.values()))
  return losses
