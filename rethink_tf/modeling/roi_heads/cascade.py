"""Cascade R-CNN (Cai and Vasconcelos, CVPR 2018) as detectron2's `CascadeROIHeads` runs it.

Box heads run in sequence: stage k pools the boxes stage k-1 regressed, is trained at a higher
foreground IoU on them, and regresses them again with tighter box-coding weights. Later stages
re-label the same RoIs (no new sampling), so every stage has the static RoI count of stage 1.
At inference the class scores of all stages are averaged and the boxes are the last stage's.

`CascadeRoIHeads` owns the stages, their losses, the checkpointed `cascade_active` flag, its
weight-decay group and its late start: `build_model.cascade_start_step` trains the model as its
first stage until that step (the paper adds cascade late in training); the training task's
generic step hook calls `set_step`, which turns the later stages on.
"""

from typing import List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from rethink_tf.layers import box_ops
from rethink_tf.modeling import postprocess
from rethink_tf.modeling.roi_heads.box import fast_rcnn_losses
from rethink_tf.modeling.roi_heads.standard import RoIHeads

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


class CascadeRoIHeads(RoIHeads):
  """`RoIHeads` whose box head is a cascade of stages (detectron2's `CascadeROIHeads`).

  Args (besides RoIHeads'):
    later_stages: (box head, class-agnostic box predictor) of stages 2..n (stage 1 is
      box_head / box_predictor, class-agnostic too).
    stage_ious, stage_box_weights: each stage's foreground IoU and box coding (n of each).
    start_step: the training step the later stages start at (0: from the start).
  While `cascade_active` is False the later stages compute, but their losses and the weight
  decay of their variables are zero and inference uses stage 1 alone.
  """

  def __init__(self,
               box_head,
               box_predictor,
               branches=(),
               *,
               later_stages: Sequence[Tuple[tf_keras.layers.Layer, tf_keras.layers.Layer]],
               stage_ious: Sequence[float],
               stage_box_weights: Sequence[Sequence[float]],
               start_step: int = 0,
               **kwargs):
    self.num_stages = 1 + len(later_stages)
    if self.num_stages < 2 or len(stage_ious) < self.num_stages or len(
        stage_box_weights) < self.num_stages:
      raise ValueError(f"{self.num_stages} box stages need at least 2 stages and as many IoUs "
                       f"({stage_ious}) and box codings ({stage_box_weights})")
    kwargs.update(fg_iou=stage_ious[0], box_weights=stage_box_weights[0])
    super().__init__(box_head, box_predictor, branches, **kwargs)
    self.cascade_box_heads = [h for h, _ in later_stages]
    self.cascade_box_predictors = [p for _, p in later_stages]
    self.cascade_active = tf.Variable(True, trainable=False, name="cascade_active")
    self.cascade_ious = tuple(float(v) for v in stage_ious[:self.num_stages])
    self.cascade_box_weights = tuple(
        tuple(float(x) for x in w) for w in stage_box_weights[:self.num_stages])
    self.start_step = int(start_step)

  def stage(self, k: int):
    """(box head, box predictor) of stage k (0-based)."""
    if k == 0:
      return self.box_head, self.box_predictor
    return self.cascade_box_heads[k - 1], self.cascade_box_predictors[k - 1]

  def later_stage_variables(self) -> List[tf.Variable]:
    layers = list(self.cascade_box_heads) + list(self.cascade_box_predictors)
    return [v for layer in layers for v in layer.variables]

  def box_input(self, pooled):
    """With active later stages the pooled features' gradient is scaled by 1 / num_stages
    (detectron2): the shared FPN sees the stages' mean."""
    return scale_gradient(pooled, tf.where(self.cascade_active, 1.0 / self.num_stages, 1.0))

  def box_train_outputs(self, feats, s, image_size, batch):
    """Stage 1 on the sampled RoIs, then stages 2..n on the boxes the previous stage
    regressed: `<key>_stage<k>` for every stage-1 key the losses read, and `cascade_active`
    (float scalar, multiplies their losses)."""
    out = super().box_train_outputs(feats, s, image_size, batch)
    gt_boxes, gt_classes = batch["gt_boxes"], batch["gt_classes"]
    rois, deltas = s["rois"], out["box_deltas"]
    for k in range(1, self.num_stages):
      rois = refine_boxes(rois, deltas, self.cascade_box_weights[k - 1], image_size)
      t = label_boxes(rois, s["weights"], gt_boxes, gt_classes, gt_classes > 0,
                      self.cascade_ious[k], self.cascade_box_weights[k])
      head, predictor = self.stage(k)
      pooled = self.box_input(self.pool_rois(feats, rois, "box"))
      logits, deltas = predictor(head(pooled, training=True))
      out.update({
          f"class_logits_stage{k + 1}": logits, f"box_deltas_stage{k + 1}": deltas,
          f"roi_classes_stage{k + 1}": t["classes"],
          f"roi_box_targets_stage{k + 1}": t["box_targets"],
          f"roi_weights_stage{k + 1}": t["weights"]
      })
    out["cascade_active"] = tf.cast(self.cascade_active, tf.float32)
    return out

  def box_loss_names(self):
    return super().box_loss_names() + [
        f"fast_rcnn_{t}_loss_stage{k}" for k in range(2, self.num_stages + 1)
        for t in ("cls", "box")
    ]

  def box_losses(self, outputs, global_sum):
    losses = super().box_losses(outputs, global_sum)
    for k in range(2, self.num_stages + 1):  # zero until cascade_active
      cls, box = fast_rcnn_losses(*(outputs[f"{key}_stage{k}"]
                                    for key in ("class_logits", "box_deltas", "roi_classes",
                                                "roi_box_targets", "roi_weights")),
                                  global_sum=global_sum)
      losses[f"fast_rcnn_cls_loss_stage{k}"] = cls * outputs["cascade_active"]
      losses[f"fast_rcnn_box_loss_stage{k}"] = box * outputs["cascade_active"]
    return losses

  def box_predictions(self, feats, proposals, valid, image_size):
    """The last stage's boxes and the stages' mean score (stage 1's alone while inactive)."""
    rois, deltas, all_probs = proposals, None, []
    for k in range(self.num_stages):
      head, predictor = self.stage(k)
      if k:
        rois = refine_boxes(rois, deltas, self.cascade_box_weights[k - 1], image_size)
      pooled = self.pool_rois(feats, rois, "box", training=False)
      logits, deltas = predictor(head(pooled, training=False))
      boxes, probs = postprocess.class_boxes(rois, valid, logits, deltas, image_size,
                                             self.cascade_box_weights[k], self.box_plus_one)
      all_probs.append(probs)
      if k == 0:
        first_boxes = boxes
    active = self.cascade_active
    return (tf.where(active, boxes, first_boxes),
            tf.where(active,
                     tf.add_n(all_probs) / self.num_stages, all_probs[0]))

  def set_step(self, step: int) -> Optional[str]:
    active = step >= self.start_step
    if bool(self.cascade_active.numpy()) == active:
      return None
    self.cascade_active.assign(active)
    state = "train from" if active else "wait for"
    return f"cascade: stages 2-{self.num_stages} {state} step {self.start_step} (now {step})"

  def steps_to_next_change(self, step: int) -> Optional[int]:
    return self.start_step - step if step < self.start_step else None

  def decay_groups(self):
    """The later stages' weight decay waits for them to start training (their gradients are
    zero before; decay alone would shrink their initialization)."""
    return [(self.later_stage_variables(), lambda: tf.cast(self.cascade_active, tf.float32))]
