"""Cascade R-CNN: later stages re-label at their IoU with their box coding; while the cascade is
inactive the model is its stage 1 (no loss, gradient or decay reaches stages 2-3); when active,
inference averages the stages' scores and keeps the last stage's boxes."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.layers import box_ops
from rethink_tf.modeling import postprocess
from rethink_tf.modeling.build import build_model
from rethink_tf.modeling.roi_heads import cascade


def test_later_stage_labels_at_its_iou_with_its_box_coding():
  gt = tf.constant([[[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 0.0, 0.0]]])
  gt_classes = tf.constant([[2, 0]])
  rois = tf.constant([[
      [10.0, 10.0, 50.0, 60.0],  # IoU 0.8
      [10.0, 10.0, 50.0, 68.0],  # IoU 0.69
      [10.0, 10.0, 50.0, 80.0],  # IoU 0.57
      [10.0, 10.0, 50.0, 50.0]
  ]])  # exact, but not a sampled slot
  weights = tf.constant([[1.0, 1.0, 1.0, 0.0]])
  iou = box_ops.pairwise_iou(rois, gt)[0, :, 0].numpy()
  np.testing.assert_allclose(iou, [0.8, 40 / 58, 40 / 70, 1.0], rtol=1e-6)
  for fg_iou, want in ((0.5, [1, 1, 1, 0]), (0.6, [1, 1, 0, 0]), (0.7, [1, 0, 0, 0])):
    w = cascade.CASCADE_BOX_WEIGHTS[2]
    t = cascade.label_boxes(rois, weights, gt, gt_classes, gt_classes > 0, fg_iou, w)
    np.testing.assert_array_equal(t["is_fg"].numpy()[0], np.array(want, bool))
    np.testing.assert_array_equal(t["classes"].numpy()[0], 2 * np.array(want))
    np.testing.assert_array_equal(t["weights"].numpy(), weights.numpy())
    fg = np.array(want, bool)
    # The targets are in this stage's coding: decoding them with its weights gives the GT.
    decoded = box_ops.decode_boxes(t["box_targets"], rois, w).numpy()[0]
    np.testing.assert_allclose(decoded[fg], np.repeat(gt.numpy()[0, :1], fg.sum(), 0), atol=1e-3)
    assert not t["box_targets"].numpy()[0][~fg].any()
  # Stage 3's weights are 3x stage 1's: the same box offset gives 3x the target.
  t1 = cascade.label_boxes(rois, weights, gt, gt_classes, gt_classes > 0, 0.5,
                           cascade.CASCADE_BOX_WEIGHTS[0])
  t3 = cascade.label_boxes(rois, weights, gt, gt_classes, gt_classes > 0, 0.5,
                           cascade.CASCADE_BOX_WEIGHTS[2])
  np.testing.assert_allclose(t3["box_targets"].numpy(),
                             3 * t1["box_targets"].numpy(),
                             rtol=1e-5,
                             atol=1e-6)


def test_refined_boxes_are_clipped_and_carry_no_gradient():
  rois = tf.Variable([[[10.0, 10.0, 30.0, 30.0]]])
  deltas = tf.constant([[[[0.0, 10.0, 0.0, 0.0]]]])  # dx = 10 / wx = 1 box width
  with tf.GradientTape() as tape:
    out = cascade.refine_boxes(rois, deltas, (10.0, 10.0, 5.0, 5.0), tf.constant([[64.0, 40.0]]))
  np.testing.assert_allclose(out.numpy(), [[[10.0, 30.0, 30.0, 40.0]]])
  assert tape.gradient(out, rois) is None


def test_one_stage_cascade_is_refused():
  with pytest.raises(ValueError, match="at least 2 stages"):
    build_model(num_classes=4, image_size=(64, 64), cascade_ious=(0.5,))


def _stage_scores(model, feats, image_size):
  """Every stage's (boxes, probs), run by hand from the model's parts."""
  _, _, rois, valid = model.proposals(feats, image_size, False)
  out, deltas = [], None
  for k in range(model.roi_heads.num_stages):
    head, predictor = model.roi_heads.stage(k)
    if k:
      rois = cascade.refine_boxes(rois, deltas, model.roi_heads.cascade_box_weights[k - 1],
                                  image_size)
    logits, deltas = predictor(head(model.roi_heads.pool_rois(feats, rois, "box", training=False)))
    out.append(
        postprocess.class_boxes(rois, valid, logits, deltas, image_size,
                                model.roi_heads.cascade_box_weights[k]))
  return out


def test_inactive_cascade_is_its_first_stage_and_active_averages_the_stages():
  config.parse_gin(["gin_configs/testing/tiny.gin"], ["build_model.cascade_ious = (0.5, 0.6, 0.7)"])
  model = build_model(num_classes=4, image_size=(64, 64))
  assert model.roi_heads.num_stages == 3 and model.roi_heads.box_predictor.class_agnostic
  batch = next(iter(make_dataset(InputConfig().prepare(), True, 2, model.anchor_kwargs, seed=0)))

  def losses_and_grads():
    with tf.GradientTape() as tape:
      losses = model.compute_losses(model(batch, training=True), batch)
    variables = model.trainable_variables
    grads = dict(zip([v.ref() for v in variables], tape.gradient(losses["total_loss"], variables)))
    return {k: float(v) for k, v in losses.items()}, grads

  model.roi_heads.cascade_active.assign(False)
  losses, grads = losses_and_grads()
  later = [
      v for layer in model.roi_heads.cascade_box_heads + model.roi_heads.cascade_box_predictors
      for v in layer.trainable_variables
  ]
  assert list(losses) == [
      "rpn_cls_loss", "rpn_box_loss", "fast_rcnn_cls_loss", "fast_rcnn_box_loss",
      "fast_rcnn_cls_loss_stage2", "fast_rcnn_box_loss_stage2", "fast_rcnn_cls_loss_stage3",
      "fast_rcnn_box_loss_stage3", "mask_loss", "total_loss"
  ]
  assert all(np.isfinite(v) for v in losses.values()), losses
  for k in (2, 3):
    assert losses[f"fast_rcnn_cls_loss_stage{k}"] == 0.0
    assert losses[f"fast_rcnn_box_loss_stage{k}"] == 0.0
  assert later and all(not np.any(grads[v.ref()].numpy()) for v in later)
  assert np.any(grads[model.roi_heads.box_head.fcs[0].kernel.ref()].numpy())

  feats = model.features(batch["images"], False)
  image_size = tf.cast(batch["image_size"], tf.float32)
  stages = _stage_scores(model, feats, image_size)
  boxes, probs = model.box_predictions(feats, image_size)
  np.testing.assert_allclose(boxes.numpy(), stages[0][0].numpy(), atol=1e-4)
  np.testing.assert_allclose(probs.numpy(), stages[0][1].numpy(), atol=1e-6)

  model.roi_heads.cascade_active.assign(True)
  losses, grads = losses_and_grads()
  for k in (2, 3):
    assert losses[f"fast_rcnn_cls_loss_stage{k}"] > 0
  assert all(
      np.any(grads[v.ref()].numpy())
      for v in model.roi_heads.cascade_box_predictors[1].trainable_variables)
  boxes, probs = model.box_predictions(feats, image_size)
  np.testing.assert_allclose(boxes.numpy(), stages[2][0].numpy(), atol=1e-4)
  mean = sum(p.numpy() for _, p in stages) / 3
  np.testing.assert_allclose(probs.numpy(), mean, atol=1e-6)
  # The class-agnostic box is every class's box.
  np.testing.assert_array_equal(boxes.numpy()[:, :, 0], boxes.numpy()[:, :, -1])
