"""Mask R-CNN with FPN, assembled from injected parts (detectron2 `GeneralizedRCNN`).

Without a mask branch the same class is Faster R-CNN; without an FPN the RPN and the RoI heads
read the backbone's single output level (the original Faster R-CNN on VGG-16 conv5).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from rethink_tf.layers import anchors as anchor_lib
from rethink_tf.modeling import postprocess
from rethink_tf.modeling.losses import Reducer
from rethink_tf.modeling.rpn import generate_proposals, rpn_losses


class MaskRCNN(tf_keras.Model):
  """backbone -> FPN -> RPN -> RoI heads (detectron2's `GeneralizedRCNN`).

  `fpn=None`: the features are the backbone outputs at levels min_level..max_level (one level
  for VGG-16 conv5: min_level = max_level = 4). `roi_heads`: the per-RoI pipeline
  (`roi_heads/standard.py`): sampling, pooling, the box head and its branches, each with its
  own targets and losses.

  Inputs (dict, static shapes; B images padded to `image_size`):
    images [B, H, W, 3] float; image_size [B, 2] float (h, w of the resized image before
    padding). Training also needs gt_boxes [B, M, 4], gt_classes [B, M] int32 (0 = padding),
    crowd_boxes [B, C, 4] (zeros = padding), what the branches need (gt_masks [B, M, S, S]
    box-relative for the mask head), and optionally sample_seed [B, 2] int (per-image seeds of
    the RoI sampling).
  `call(training=True)` returns raw outputs and the sampled targets (`compute_losses` turns
  them into losses); `call(training=False)` returns detections (see `detect`).
  """

  def __init__(self, backbone, fpn, rpn_head, roi_heads, *, num_classes: int,
               image_size: Sequence[int], min_level: int, max_level: int,
               aspect_ratios: Sequence[float], anchor_size: float, anchor_scales: Sequence[float],
               anchor_offset: float, rpn_topk_train: Tuple[int, int],
               rpn_topk_test: Tuple[int, int], rpn_nms_threshold: float, box_plus_one: bool,
               detections_per_image: int, score_threshold: float, nms_threshold: float, **kwargs):
    super().__init__(**kwargs)
    # Under a mixed-precision policy Keras would cast every float input to the compute dtype;
    # boxes and sizes must stay float32 (bf16 cannot hold 800 px to the pixel). The backbone
    # casts the images itself.
    self._autocast = False
    self.backbone, self.fpn, self.rpn_head = backbone, fpn, rpn_head
    self.roi_heads = roi_heads
    self.num_classes = num_classes
    self.image_size = tuple(int(s) for s in image_size)
    self.feature_levels = list(range(min_level, max_level + 1))
    # Detectron's "+1" box convention (converted Detectron models; see layers/box_ops.py):
    # 1.0 or 0.0, added to widths in box coding, clipping, NMS and level assignment.
    self.box_plus_one = 1.0 if box_plus_one else 0.0
    # The input pipeline labels anchors with the same arguments (one source of truth).
    self.anchor_kwargs: Dict[str, Any] = dict(min_level=min_level,
                                              max_level=max_level,
                                              aspect_ratios=tuple(aspect_ratios),
                                              anchor_size=anchor_size,
                                              anchor_scales=tuple(anchor_scales),
                                              offset=anchor_offset,
                                              detectron_rounding=bool(box_plus_one))
    self.anchors = anchor_lib.multilevel_anchors(self.image_size, **self.anchor_kwargs)
    self.rpn_topk = {True: tuple(rpn_topk_train), False: tuple(rpn_topk_test)}
    self.rpn_nms_threshold = rpn_nms_threshold
    self.detections_per_image = detections_per_image
    self.score_threshold, self.nms_threshold = score_threshold, nms_threshold

  def features(self, images, training):
    """images [B, H, W, 3] -> dict level -> [B, H/2^l, W/2^l, C] (FPN or backbone levels)."""
    feats = self.backbone(images, training=training)
    if self.fpn is None:
      return {l: feats[l] for l in self.feature_levels}
    return self.fpn(feats, training=training)

  def proposals(self, feats, image_size, training):
    """RPN on `feats` -> (scores {level: [B, A_l]}, deltas {level: [B, A_l, 4]}, proposals
    [B, P, 4] yxyx in resized-image pixels, valid [B, P] bool); P is the train or test
    post-NMS top-k."""
    scores, deltas = self.rpn_head(feats)
    pre, post = self.rpn_topk[bool(training)]
    # Another canvas than the model's (evaluation and serving fit each batch's canvas to its
    # images; multi-scale test-time augmentation) gets its own anchors, from the feature maps'
    # sizes: static when the traced shape is known, computed in the graph when it is not.
    shapes = {l: _spatial_shape(feats[l]) for l in self.feature_levels}
    level = self.feature_levels[0]
    own = tuple(-(-s // 2**level) for s in self.image_size)
    if all(isinstance(d, int) for d in shapes[level]) and shapes[level] == own:
      anchors = self.anchors
    else:
      kwargs = {k: v for k, v in self.anchor_kwargs.items() if k not in ("min_level", "max_level")}
      anchors = anchor_lib.grid_anchors(shapes, **kwargs)
    props, valid = generate_proposals(scores, deltas, anchors, image_size, pre, post,
                                      self.rpn_nms_threshold, self.box_plus_one)
    return scores, deltas, props, valid

  def call(self, inputs: Dict[str, tf.Tensor], training=None):
    if training:
      return self.train_outputs(inputs)
    return self.detect(inputs["images"], inputs["image_size"])

  def train_outputs(self, inputs):
    """RPN logits/deltas, the RoI heads' outputs and the targets sampled in-graph."""
    feats = self.features(inputs["images"], True)
    image_size = tf.cast(inputs["image_size"], tf.float32)
    scores, deltas, props, valid = self.proposals(feats, image_size, True)
    levels = sorted(scores)
    outputs = dict(rpn_scores=tf.concat([scores[l] for l in levels], 1),
                   rpn_deltas=tf.concat([deltas[l] for l in levels], 1),
                   num_proposals=tf.reduce_sum(tf.cast(valid, tf.float32), axis=1))
    outputs.update(self.roi_heads.train_outputs(feats, props, valid, image_size, inputs))
    return outputs

  def loss_names(self) -> List[str]:
    """The keys of `compute_losses`, in its order (the train loop's state needs them before
    the first step runs)."""
    return ["rpn_cls_loss", "rpn_box_loss"] + self.roi_heads.loss_names() + ["total_loss"]

  def compute_losses(self,
                     outputs: Dict[str, tf.Tensor],
                     batch: Dict[str, tf.Tensor],
                     global_sum: Reducer = None) -> Dict[str, tf.Tensor]:
    """Every loss term by name plus their sum under "total_loss" (weight decay excluded).

    global_sum: sums a count over all replicas (None: this replica is the whole batch).
    """
    rpn_cls, rpn_box = rpn_losses(outputs["rpn_scores"], outputs["rpn_deltas"], batch["rpn_labels"],
                                  batch["rpn_box_targets"], global_sum)
    losses = dict(rpn_cls_loss=rpn_cls, rpn_box_loss=rpn_box)
    losses.update(self.roi_heads.losses(outputs, global_sum))
    losses["total_loss"] = tf.add_n(list(losses.values()))
    return losses

  def detect(self, images, image_size):
    """Inference on padded images [B, H, W, 3] with resized sizes [B, 2].

    Returns dict: boxes [B, D, 4] yxyx in resized-image pixels, scores [B, D],
    classes [B, D] int32 contiguous 1..K-1, num_detections [B] int32, and what the RoI heads'
    branches add (masks [B, D, 28, 28] float probabilities relative to each box with a mask
    head).
    """
    feats = self.features(images, False)
    image_size = tf.cast(image_size, tf.float32)
    boxes, probs = self.box_predictions(feats, image_size)
    det = postprocess.nms_detections(boxes, probs, self.score_threshold, self.nms_threshold,
                                     self.detections_per_image)
    return self.roi_heads.instance_outputs(feats, det)

  def box_predictions(self, feats, image_size):
    """Every proposal's per-class boxes [B, N, K-1, 4] and scores [B, N, K-1] before NMS
    (`RoIHeads.box_predictions`)."""
    _, _, props, valid = self.proposals(feats, image_size, False)
    return self.roi_heads.box_predictions(feats, props, valid, image_size)

  # What changes with the training step, and the weight-decay groups (the RoI heads').

  def set_step(self, step: int) -> Optional[str]:
    return self.roi_heads.set_step(step)

  def steps_to_next_change(self, step: int) -> Optional[int]:
    return self.roi_heads.steps_to_next_change(step)

  def decay_groups(self):
    return self.roi_heads.decay_groups()

  def check_data(self, input_config):
    """Raises ConfigError when the input configuration cannot train the RoI heads' branches."""
    for branch in self.roi_heads.branches:
      branch.check_data(input_config)


def _spatial_shape(x):
  """(H, W) of [B, H, W, C]: Python ints where the traced shape knows them, else tensors."""
  dynamic = tf.shape(x)
  return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (1, 2))
