"""Cascade R-CNN (Cai and Vasconcelos, CVPR 2018) as detectron2's `CascadeROIHeads` runs it.

Box heads run in sequence: stage k pools the boxes stage k-1 regressed, is trained at a higher
foreground IoU on them, and regresses them again with tighter box-coding weights. Later stages
re-label the same RoIs (no new sampling), so every stage has the static RoI count of stage 1.
At inference the class scores of all stages are averaged and the boxes are the last stage's.

The stages' heads, IoUs, box codings and the checkpointed `cascade_active` flag are attributes
of `MaskRCNN` (so checkpoints keep their variable paths); the functions below that take the
model are its later stages' training outputs and gradient scaling. The trainer's only part is
the `CascadeStart` hook, which sets `cascade_active` at `TrainConfig.cascade_start_step`.
"""

import tensorflow as tf

from rethink_tf.layers import box_ops

CASCADE_IOUS = (0.5, 0.6, 0.7)
# Stage-specific box-coding weights (wy, wx, wh, ww): deltas of better-localized boxes are
# smaller, larger weights keep the regression targets at unit scale.
CASCADE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def refine_boxes(rois, box_deltas, box_weights, image_size):
  """Applies class-agnostic deltas: rois [B, N, 4], box_deltas [B, N, 1, 4] -> [B, N, 4]
  clipped to image_size [B, 2]. No gradient flows into the next stage's boxes."""
  boxes = box_ops.decode_boxes(tf.cast(box_deltas[:, :, 0], tf.float32), rois, box_weights)
  boxes = box_ops.clip_boxes(boxes, tf.cast(image_size, tf.float32)[:, None, :])
  return tf.stop_gradient(boxes)


def label_boxes(rois, roi_weights, gt_boxes, gt_classes, gt_valid, fg_iou: float, box_weights):
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
  return dict(classes=tf.cast(classes, tf.int32),
              box_targets=tf.stop_gradient(targets),
              weights=roi_weights,
              is_fg=is_fg)


def scale_gradient(x, scale: float):
  """Identity forward; the gradient is multiplied by `scale` (detectron2 scales each stage's
  pooled features by 1 / num_stages, so the shared FPN sees the stages' mean)."""
  scale = tf.cast(scale, x.dtype)
  return x * scale + tf.stop_gradient(x) * (1.0 - scale)


def stage(model, k: int):
  """(box head, box predictor) of stage k (0-based) of `model`."""
  if k == 0:
    return model.box_head, model.box_predictor
  return model.cascade_box_heads[k - 1], model.cascade_box_predictors[k - 1]


def later_stage_variables(model):
  """Variables of stages 2.. (empty without cascade): their weight decay waits for
  `cascade_active`, as their gradients do."""
  layers = list(getattr(model, "cascade_box_heads", [])) + list(
      getattr(model, "cascade_box_predictors", []))
  return [v for layer in layers for v in layer.variables]


def stage_input(model, pooled):
  """Pooled RoI features [B, N, S, S, C] entering a box stage: with active cascade stages
  their gradient is scaled by 1 / num_stages (detectron2)."""
  if model.num_stages == 1:
    return pooled
  return scale_gradient(pooled, tf.where(model.cascade_active, 1.0 / model.num_stages, 1.0))


def later_stage_train_outputs(model, feats, s, box_deltas, image_size, gt_boxes, gt_classes,
                              gt_valid):
  """Stages 2..n of `model` on the boxes the previous stage regressed.

  s: stage 1's sampled RoIs (`roi_sampling.sample_rois`); box_deltas [B, S, 1, 4] its
  regression. Returns `<key>_stage<k>` for every stage-1 key the losses read (class_logits,
  box_deltas, roi_classes, roi_box_targets, roi_weights) and `cascade_active` (float scalar,
  multiplies their losses).
  """
  rois, deltas, out = s["rois"], box_deltas, {}
  for k in range(1, model.num_stages):
    rois = refine_boxes(rois, deltas, model.cascade_box_weights[k - 1], image_size)
    t = label_boxes(rois, s["weights"], gt_boxes, gt_classes, gt_valid, model.cascade_ious[k],
                    model.cascade_box_weights[k])
    head, predictor = stage(model, k)
    pooled = stage_input(model, model.pool_rois(feats, rois, "box"))
    logits, deltas = predictor(head(pooled, training=True))
    out.update({
        f"class_logits_stage{k + 1}": logits, f"box_deltas_stage{k + 1}": deltas,
        f"roi_classes_stage{k + 1}": t["classes"],
        f"roi_box_targets_stage{k + 1}": t["box_targets"], f"roi_weights_stage{k + 1}": t["weights"]
    })
  out["cascade_active"] = tf.cast(model.cascade_active, tf.float32)
  return out
