"""Anchors: Model Garden's (this project's default), detectron2's offset and Detectron's rounded
cell anchors, against each source's rule."""

import numpy as np

from rethink_tf.layers import anchors as anchor_lib


def test_detectron_cell_anchors_are_py_faster_rcnns():
  """generate_anchors(stride 16, sizes 128/256/512): the table printed by Detectron's and
  py-faster-rcnn's generator (its docstring lists MATLAB's 1-based copy, one higher)."""
  np.testing.assert_array_equal(anchor_lib.detectron_cell_anchors(16, [128, 256, 512], [0.5, 1, 2]),
                                [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                                 [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                                 [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]])


def test_offset_moves_centres_and_ratios_are_width_over_height():
  default = anchor_lib.multilevel_anchors((64, 64), 2, 3, (0.5, 1.0, 2.0), 4.0)
  d2 = anchor_lib.multilevel_anchors((64, 64), 2, 3, (0.5, 1.0, 2.0), 4.0, offset=0.0)
  for level in (2, 3):
    a, b = default[level].numpy(), d2[level].numpy()
    stride = 2**level
    assert a.shape == (64 // stride * 64 // stride * 3, 4)
    np.testing.assert_allclose(a - b, 0.5 * stride)  # every corner, every anchor
    centre = (b[:, :2] + b[:, 2:]) / 2  # yx, rows (y, x, ratio)
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-5)
    np.testing.assert_allclose(centre[3], [0.0, stride], atol=1e-5)
    h, w = b[:3, 2] - b[:3, 0], b[:3, 3] - b[:3, 1]
    np.testing.assert_allclose(w / h, [0.5, 1.0, 2.0], rtol=1e-5)  # width / height
    np.testing.assert_allclose(np.sqrt(w * h), 4.0 * stride, rtol=1e-5)


def test_detectron_rounding_shifts_cell_anchors_by_stride():
  got = anchor_lib.multilevel_anchors((64, 64), 2, 2, (2.0, 1.0, 0.5), 8.0,
                                      detectron_rounding=True)[2].numpy()
  # Detectron's ratios are height / width: our (2, 1, 0.5) is its (0.5, 1, 2).
  cells = anchor_lib.detectron_cell_anchors(4, [32], [0.5, 1.0, 2.0])[:, [1, 0, 3, 2]]
  np.testing.assert_array_equal(got[:3], cells)
  np.testing.assert_array_equal(got[3:6], cells + [0, 4, 0, 4])  # the next column
  np.testing.assert_array_equal(got[16 * 3:16 * 3 + 3], cells + [4, 0, 4, 0])  # the next row


def _rpn_case(seed):
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  anchors = anchor_lib.multilevel_anchors((128, 128), 2, 6, (0.5, 1.0, 2.0), 4.0)
  anchors = tf.concat([anchors[k] for k in sorted(anchors)], 0)
  n = int(rng.integers(0, 6))
  lo = rng.uniform(0, 100, (n, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(4, 60, (n, 2))], 1).astype(np.float32)
  crowd = np.array([[10, 10, 50, 60]], np.float32)[:seed % 2]
  return anchors, boxes, crowd


def test_rpn_targets_of_own_boxes_equal_those_of_padded_boxes():
  """The input pipeline labels anchors against an image's own boxes plus one invalid entry;
  labels and targets are those of the padded ground truth, and targets are the encoded
  matched boxes at the positives only."""
  import tensorflow as tf

  from rethink_tf.layers import box_ops
  for seed in range(6):
    anchors, boxes, crowd = _rpn_case(seed)
    pad = lambda b, m: np.concatenate([b, np.zeros((m - len(b), 4), np.float32)])
    key = tf.constant([seed, 7], tf.int64)
    padded = anchor_lib.rpn_targets(anchors, pad(boxes, 20),
                                    np.arange(20) < len(boxes), pad(crowd, 4),
                                    np.arange(4) < len(crowd), key)
    own = anchor_lib.rpn_targets(anchors, pad(boxes,
                                              len(boxes) + 1),
                                 np.arange(len(boxes) + 1) < len(boxes), pad(crowd,
                                                                             len(crowd) + 1),
                                 np.arange(len(crowd) + 1) < len(crowd), key)
    for a, b in zip(padded, own):
      np.testing.assert_array_equal(a.numpy(), b.numpy())
    labels, targets = (t.numpy() for t in own)
    assert (labels == 1).sum() <= 128 and (labels >= 0).sum() <= 256
    assert ((labels == 1).sum() > 0) == (len(boxes) > 0)
    positive = labels == 1
    assert not targets[~positive].any()
    if len(boxes):
      iou = box_ops.pairwise_iou(anchors[None], tf.constant(boxes)[None])[0].numpy()
      want = box_ops.encode_boxes(tf.gather(boxes, iou.argmax(1)), anchors,
                                  anchor_lib.RPN_BOX_WEIGHTS).numpy()
      np.testing.assert_allclose(targets[positive], want[positive], rtol=1e-6, atol=1e-6)
