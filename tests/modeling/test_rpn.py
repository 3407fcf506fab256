"""Proposal generation: detectron2's rule (NMS per level, then the best of all levels) and
Detectron's (the best `post_nms_topk` of each level first, "+1" boxes), against numpy
implementations of each."""

import numpy as np
import tensorflow as tf

from rethink_tf.modeling.rpn import RPNHead, generate_proposals


def _nms(boxes, scores, thr, plus_one):
  """Greedy NMS (torchvision / Detectron's cython): suppress IoU > thr; yxyx boxes."""
  order, keep = np.argsort(-scores, kind="stable"), []
  area = (boxes[:, 2] - boxes[:, 0] + plus_one) * (boxes[:, 3] - boxes[:, 1] + plus_one)
  while order.size:
    i = order[0]
    keep.append(i)
    lo, hi = np.maximum(boxes[i, :2], boxes[order, :2]), np.minimum(boxes[i, 2:], boxes[order, 2:])
    hh, ww = np.maximum(hi - lo + plus_one, 0).T
    iou = hh * ww / (area[i] + area[order] - hh * ww)
    order = order[iou <= thr]
  return np.array(keep, int)


def _reference(level_boxes, level_scores, pre, post, thr, per_level, plus_one, size):
  """Proposals [P, 4] of one image from already-decoded per-level boxes."""
  boxes, scores = [], []
  for b, s in zip(level_boxes, level_scores):
    top = np.argsort(-s, kind="stable")[:pre]
    b, s = b[top], s[top]
    b = np.clip(b, 0, np.array(size + size, np.float32) - plus_one)
    if plus_one:  # Detectron's _filter_boxes
      h, w = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
      ok = (h >= 1) & (w >= 1) & (b[:, 0] + h / 2 < size[0]) & (b[:, 1] + w / 2 < size[1])
    else:
      ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s = b[ok], s[ok]
    keep = _nms(b, s, thr, plus_one)
    if per_level:
      keep = keep[:post]
    boxes.append(b[keep])
    scores.append(s[keep])
  b, s = np.concatenate(boxes), np.concatenate(scores)
  return b[np.argsort(-s, kind="stable")[:post]]


def _inputs(seed):
  rng = np.random.default_rng(seed)
  scores, deltas, anchors, level_boxes = {}, {}, {}, []
  for level, n in ((2, 300), (3, 120)):
    y, x = rng.uniform(-10, 100, n), rng.uniform(-10, 140, n)
    hw = rng.uniform(4, 60, (n, 2))
    a = np.stack([y, x, y + hw[:, 0], x + hw[:, 1]], 1).astype(np.float32)
    anchors[level] = tf.constant(a)
    deltas[level] = tf.zeros([1, n, 4])  # proposals = the (clipped) anchors
    scores[level] = tf.constant(rng.normal(size=(1, n)).astype(np.float32))
    level_boxes.append(a)
  return scores, deltas, anchors, level_boxes, [scores[l].numpy()[0] for l in (2, 3)]


def test_proposals_follow_detectron2_and_detectron():
  size = [96.0, 128.0]
  for seed in range(3):
    scores, deltas, anchors, level_boxes, level_scores = _inputs(seed)
    for plus_one in (0.0, 1.0):
      props, valid = generate_proposals(scores,
                                        deltas,
                                        anchors,
                                        tf.constant([size]),
                                        pre_nms_topk=100,
                                        post_nms_topk=40,
                                        nms_threshold=0.5,
                                        box_plus_one=plus_one)
      got = props.numpy()[0][valid.numpy()[0]]
      ref = _reference(level_boxes, level_scores, 100, 40, 0.5, False, plus_one, size)
      assert len(ref) == 40
      np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"seed {seed}, +{plus_one}")
      # Detectron's per-level cap before the overall top-k selects the same boxes.
      np.testing.assert_array_equal(
          _reference(level_boxes, level_scores, 100, 40, 0.5, True, plus_one, size), ref)


def test_rpn_head_output_order_is_row_column_anchor():
  """Scores [B, H*W*A] and deltas [B, H*W*A, 4] in (y, x, anchor) order, the anchors' order."""
  head = RPNHead(8, num_anchors=3)
  x = tf.random.stateless_normal([1, 4, 5, 8], [0, 1])
  scores, deltas = head({2: x})
  assert scores[2].shape == (1, 60) and deltas[2].shape == (1, 60, 4)
  raw = head.objectness(head.conv(x)).numpy()[0]  # [H, W, A]
  np.testing.assert_allclose(scores[2].numpy()[0], raw.reshape(-1), rtol=1e-6)
  raw = head.deltas(head.conv(x)).numpy()[0].reshape(4, 5, 3, 4)
  np.testing.assert_allclose(deltas[2].numpy()[0], raw.reshape(-1, 4), rtol=1e-6)
