"""The assembled Mask R-CNN (detectron2's tests/modeling/test_model_e2e.py as the example): static
shapes of the training outputs and detections, detections that are consistent (inside the
image, sorted, padded with zeros, masks of the detected class), Faster R-CNN without masks, and
the RPN's anchors for another padded size."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.layers import anchors as anchor_lib
from rethink_tf.modeling.build import build_model
from rethink_tf.modeling.roi_heads import mask as mask_branch

TINY = "gin_configs/testing/tiny.gin"
CLASSES = 4  # background + the 3 synthetic shapes


@pytest.fixture(scope="module")
def tiny():
  """(model, a training batch of 2) of gin_configs/testing/tiny.gin, built once."""
  config.parse_gin([TINY])
  cfg = InputConfig().prepare()
  model = build_model(num_classes=CLASSES, image_size=cfg.padded_size)
  batch = next(iter(make_dataset(cfg, True, 2, model.anchor_kwargs, seed=0)))
  model.detect(batch["images"], batch["image_size"])  # creates the variables
  return model, batch, cfg


def test_training_outputs_have_static_shapes(tiny):
  model, batch, cfg = tiny
  out = model(batch, training=True)
  anchors = sum(
      int(a.shape[0])
      for a in anchor_lib.multilevel_anchors(cfg.padded_size, **model.anchor_kwargs).values())
  s, r = model.roi_heads.samples_per_image, model.roi_heads.branch_rois_per_image
  size = model.roi_heads.branch("mask").predictor.filters  # mask logits per class, one channel each
  assert size == CLASSES
  want = {
      "rpn_scores": (2, anchors),
      "rpn_deltas": (2, anchors, 4),
      "class_logits": (2, s, CLASSES),
      "box_deltas": (2, s, CLASSES, 4),
      "roi_classes": (2, s),
      "roi_box_targets": (2, s, 4),
      "roi_weights": (2, s),
      "num_proposals": (2,),
      "num_fg_rois": (2,),
      "mask_logits": (2, r, 28, 28),
      "mask_targets": (2, r, 28, 28),
      "mask_weights": (2, r),
  }
  assert {k: tuple(v.shape) for k, v in out.items()} == want
  # Sampled RoIs: at most the positive fraction are foreground, every foreground has a class.
  fg = out["roi_classes"].numpy() > 0
  assert (fg.sum(axis=1) <= int(s * model.roi_heads.positive_fraction)).all() and fg.any()
  np.testing.assert_array_equal(out["num_fg_rois"].numpy(), fg.sum(axis=1))
  # Mask targets are binary and weighted only on foreground RoIs.
  targets = out["mask_targets"].numpy()
  assert set(np.unique(targets)) <= {0.0, 1.0}
  np.testing.assert_array_equal(out["mask_weights"].numpy(), fg[:, :r].astype(np.float32))


def test_detections_are_padded_sorted_and_inside_the_image(tiny):
  model, batch, _ = tiny
  det = model.detect(batch["images"], batch["image_size"])
  d = model.detections_per_image
  assert {k: tuple(v.shape) for k, v in det.items()} == {
      "boxes": (2, d, 4), "scores": (2, d), "classes": (2, d), "num_detections": (2,),
      "masks": (2, d, 28, 28)
  }
  assert det["classes"].dtype == tf.int32 and det["num_detections"].dtype == tf.int32
  for i in range(2):
    n = int(det["num_detections"][i])
    scores, classes = det["scores"][i].numpy(), det["classes"][i].numpy()
    boxes, masks = det["boxes"][i].numpy(), det["masks"][i].numpy()
    h, w = batch["image_size"][i].numpy()
    assert (np.diff(scores[:n]) <= 1e-7).all()  # best first
    assert (scores[:n] >= model.score_threshold).all() and not scores[n:].any()
    assert ((classes[:n] >= 1) & (classes[:n] < CLASSES)).all()
    assert (boxes[:n, 0] >= 0).all() and (boxes[:n, 2] <= h + 1e-3).all()
    assert (boxes[:n, 1] >= 0).all() and (boxes[:n, 3] <= w + 1e-3).all()
    assert ((masks >= 0) & (masks <= 1)).all()


def test_masks_are_those_of_the_detected_class(tiny):
  model, batch, _ = tiny
  feats = model.features(batch["images"], False)
  det = model.detect(batch["images"], batch["image_size"])
  pooled = model.roi_heads.pool_rois(feats, det["boxes"], "mask", training=False)
  logits = model.roi_heads.branch("mask")(pooled, training=False).numpy()  # [B, D, 28, 28, K]
  classes = det["classes"].numpy()
  want = 1 / (1 + np.exp(-np.take_along_axis(logits, classes[:, :, None, None, None], 4)[..., 0]))
  np.testing.assert_allclose(det["masks"].numpy(), want, rtol=1e-4, atol=1e-5)


def test_select_class_gathers_the_class_channel():
  logits = tf.reshape(tf.range(2 * 3 * 2 * 2 * 4, dtype=tf.float32), [2, 3, 2, 2, 4])
  classes = tf.constant([[0, 3, 1], [2, 2, 0]])
  picked = mask_branch.select_class(logits, classes).numpy()
  for b in range(2):
    for r in range(3):
      np.testing.assert_array_equal(picked[b, r], logits.numpy()[b, r, :, :, classes[b, r]])


def test_features_are_the_fpn_levels_at_their_strides(tiny):
  model, batch, cfg = tiny
  feats = model.features(batch["images"], False)
  assert sorted(feats) == model.feature_levels == [2, 3, 4, 5, 6]
  for level, f in feats.items():
    assert tuple(f.shape[1:3]) == (cfg.padded_size[0] // 2**level, cfg.padded_size[1] // 2**level)


def test_proposals_of_another_padded_size_use_its_own_anchors(tiny):
  """Test-time augmentation runs the model at other sizes: the anchors follow the features."""
  model, _, _ = tiny
  images = tf.zeros([1, 96, 96, 3])
  feats = model.features(images, False)
  scores, deltas, props, valid = model.proposals(feats, tf.constant([[96.0, 96.0]]), False)
  anchors = anchor_lib.multilevel_anchors((96, 96), **model.anchor_kwargs)
  assert {l: int(s.shape[1]) for l, s in scores.items()
         } == {l: int(a.shape[0]) for l, a in anchors.items()}
  assert props.shape == (1, model.rpn_topk[False][1], 4) and valid.shape[1] == props.shape[1]
  p = props.numpy()[0][valid.numpy()[0]]
  assert len(p) and (p >= 0).all() and (p <= 96 + 1e-3).all()


def test_faster_rcnn_has_no_mask_terms():
  config.parse_gin([TINY], ["build_model.mask_on = False"])
  cfg = InputConfig().prepare()
  model = build_model(num_classes=CLASSES, image_size=cfg.padded_size)
  assert model.roi_heads.branch("mask") is None
  batch = next(iter(make_dataset(cfg, True, 2, model.anchor_kwargs, seed=0)))
  out = model(batch, training=True)
  assert not any(k.startswith("mask") for k in out)
  det = model.detect(batch["images"], batch["image_size"])
  assert "masks" not in det and det["boxes"].shape == (2, model.detections_per_image, 4)
