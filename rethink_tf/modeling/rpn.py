"""Region Proposal Network: shared head over P2-P6 and static-shape proposal generation."""

from typing import Dict

import tensorflow as tf
import tf_keras

from rethink_tf.layers import box_ops
from rethink_tf.layers.nms import batched_nms_padded
from rethink_tf.modeling.losses import Reducer, normalizer, smooth_l1


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class RPNHead(tf_keras.layers.Layer):
  """3x3 conv + ReLU, then 1x1 objectness (A) and 1x1 deltas (4A); no norm (as the paper).

  Input: dict level -> [B, H_l, W_l, C]. Output: (scores dict level -> [B, H_l*W_l*A] logits,
  deltas dict level -> [B, H_l*W_l*A, 4]).
  """

  def __init__(self, channels: int = 256, num_anchors: int = 3, **kwargs):
    super().__init__(**kwargs)
    self.channels, self.num_anchors = channels, num_anchors
    init = lambda: tf_keras.initializers.RandomNormal(stddev=0.01)  # fresh per layer
    self.conv = tf_keras.layers.Conv2D(channels,
                                       3,
                                       padding="same",
                                       activation="relu",
                                       kernel_initializer=init(),
                                       name="conv")
    # float32 outputs under mixed precision: proposals are decoded and ranked from them.
    self.objectness = tf_keras.layers.Conv2D(num_anchors,
                                             1,
                                             kernel_initializer=init(),
                                             dtype="float32",
                                             name="objectness")
    self.deltas = tf_keras.layers.Conv2D(4 * num_anchors,
                                         1,
                                         kernel_initializer=init(),
                                         dtype="float32",
                                         name="deltas")

  def call(self, feats: Dict[int, tf.Tensor]):
    scores, deltas = {}, {}
    for level, x in feats.items():
      b = tf.shape(x)[0]
      h = self.conv(x)
      # The anchor count stays static when only the batch is dynamic (a served model).
      n = -1 if None in x.shape[1:3] else x.shape[1] * x.shape[2] * self.num_anchors
      scores[level] = tf.reshape(self.objectness(h), [b, n])
      deltas[level] = tf.reshape(self.deltas(h), [b, n, 4])
    return scores, deltas

  def get_config(self):
    return {**super().get_config(), "channels": self.channels, "num_anchors": self.num_anchors}


def generate_proposals(scores: Dict[int, tf.Tensor],
                       deltas: Dict[int, tf.Tensor],
                       anchors: Dict[int, tf.Tensor],
                       image_size,
                       pre_nms_topk: int,
                       post_nms_topk: int,
                       nms_threshold: float = 0.7,
                       box_plus_one: float = 0.0):
  """Top-k per level, decode, clip, drop empty boxes, per-level NMS, then the best
  `post_nms_topk` over all levels.

  This is detectron2's FPN rule (`proposal_utils.find_top_rpn_proposals`) and Detectron's
  (`ops/generate_proposals.py` + `collect_and_distribute_fpn_rpn_proposals.collect`), which
  also keeps the best `post_nms_topk` of each level before the overall top-k: with the same k
  that changes nothing (every box of the overall top-k is within its level's top-k).
  `box_plus_one=1` is Detectron's box convention ("+1" widths in decoding, clipping to
  [0, w - 1] and NMS overlaps; boxes kept when at least 1 px wide with their centre inside the
  image).

  Args:
    scores: level -> [B, A_l] logits; deltas: level -> [B, A_l, 4]; anchors: level -> [A_l, 4].
    image_size: [B, 2] float (h, w) of the resized image inside the padded canvas.
  Returns:
    proposals [B, post_nms_topk, 4] (gradient stopped), valid [B, post_nms_topk] bool.
  """
  all_boxes, all_scores, all_levels = [], [], []
  size = image_size[:, None, :]
  for i, level in enumerate(sorted(scores)):
    s = tf.stop_gradient(scores[level])
    # Fewer anchors than the top-k on a small canvas; a canvas known only at run time (served
    # or fit to its images) decides in the graph.
    k = min(pre_nms_topk, s.shape[1]) if s.shape[1] is not None else tf.minimum(
        pre_nms_topk,
        tf.shape(s)[1])
    top_s, top_i = tf.math.top_k(s, k=k)
    d = tf.gather(tf.stop_gradient(deltas[level]), top_i, batch_dims=1)
    a = tf.gather(anchors[level], top_i)
    boxes = box_ops.decode_boxes(d, a, plus_one=box_plus_one)
    boxes = box_ops.clip_boxes(boxes, size, plus_one=box_plus_one)
    all_boxes.append(boxes)
    all_scores.append(top_s)
    all_levels.append(tf.fill(tf.shape(top_s), i))
  if box_plus_one:
    keep = [_detectron_keep(b, size) for b in all_boxes]
  else:  # empty boxes (e.g. clipped away) are never proposed
    keep = [tf.logical_and(b[..., 2] > b[..., 0], b[..., 3] > b[..., 1]) for b in all_boxes]
  # NMS overlaps measured on continuous boxes: an inclusive box spans [x1, x2 + 1).
  one = tf.constant([0.0, 0.0, box_plus_one, box_plus_one])
  boxes = tf.concat(all_boxes, 1)
  nonempty = tf.concat(keep, 1)
  scores_cat = tf.where(nonempty, tf.concat(all_scores, 1), -1e9)
  idx, valid = batched_nms_padded(boxes + one, scores_cat, tf.concat(all_levels, 1), post_nms_topk,
                                  nms_threshold)
  props = tf.gather(boxes, idx, batch_dims=1)
  valid = tf.logical_and(valid, tf.gather(nonempty, idx, batch_dims=1))
  props = tf.where(valid[..., None], props, 0.0)
  return tf.stop_gradient(props), valid


def _detectron_keep(boxes, size):
  """Detectron's `_filter_boxes` with RPN_MIN_SIZE 0 (raised to 1 px): width and height
  (+1) >= 1 and the box centre inside the image. boxes [B, K, 4] inclusive, size [B, 1, 2]."""
  hs = boxes[..., 2] - boxes[..., 0] + 1.0
  ws = boxes[..., 3] - boxes[..., 1] + 1.0
  return tf.reduce_all(tf.stack([
      hs >= 1.0, ws >= 1.0, boxes[..., 0] + hs / 2.0 < size[..., 0], boxes[..., 1] + ws / 2.0
      < size[..., 1]
  ]),
                       axis=0)


RPN_SMOOTH_L1_BETA = 1.0 / 9.0  # Detectron RPN


def rpn_losses(rpn_scores, rpn_deltas, rpn_labels, rpn_box_targets, global_sum: Reducer = None):
  """Objectness BCE and box smooth-L1, both normalized by the number of sampled anchors.

  Args: rpn_scores [B, A]; rpn_deltas [B, A, 4]; rpn_labels [B, A] in {1, 0, -1};
    rpn_box_targets [B, A, 4].
  """
  rpn_scores = tf.cast(rpn_scores, tf.float32)
  sampled = tf.cast(rpn_labels >= 0, tf.float32)
  norm = normalizer(tf.reduce_sum(sampled), global_sum)
  labels = tf.cast(rpn_labels > 0, tf.float32)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=rpn_scores)
  cls_loss = tf.reduce_sum(bce * sampled) / norm
  box = smooth_l1(tf.cast(rpn_deltas, tf.float32) - rpn_box_targets, RPN_SMOOTH_L1_BETA)
  box_loss = tf.reduce_sum(tf.reduce_sum(box, -1) * labels) / norm
  return cls_loss, box_loss
