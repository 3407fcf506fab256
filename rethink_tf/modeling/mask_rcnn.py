"""Mask R-CNN with FPN, assembled from injected parts (detectron2 `GeneralizedRCNN`).

Without a mask head the same class is Faster R-CNN; without an FPN the RPN and the RoI head
read the backbone's single output level (the original Faster R-CNN on VGG-16 conv5).
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf
import tf_keras

from rethink_tf.layers.roi_align import multilevel_roi_align
from rethink_tf.modeling import anchors as anchor_lib
from rethink_tf.modeling import keypoints as keypoint_lib
from rethink_tf.modeling import postprocess, roi_sampling
from rethink_tf.modeling.rpn import generate_proposals


class MaskRCNN(tf_keras.Model):
  """backbone -> FPN -> RPN -> proposals -> box head / mask head.

  `fpn=None`: the features are the backbone outputs at levels min_level..max_level (one level
  for VGG-16 conv5: min_level = max_level = 4). `mask_head=None`: no mask branch (Faster
  R-CNN); training outputs carry no mask terms and detections no masks. `keypoint_head`:
  Keypoint R-CNN's heatmaps on the same foreground RoIs (training needs gt_keypoints
  [B, M, K, 3], x/y/v in resized pixels); detections gain keypoints [B, D, K, 3].

  Inputs (dict, static shapes; B images padded to `image_size`):
    images [B, H, W, 3] float; image_size [B, 2] float (h, w of the resized image before
    padding). Training also needs gt_boxes [B, M, 4], gt_classes [B, M] int32 (0 = padding),
    gt_masks [B, M, S, S] (box-relative), crowd_boxes [B, C, 4] (zeros = padding), and
    optionally sample_seed [B, 2] int (per-image seeds of the RoI sampling).
  `call(training=True)` returns raw outputs and the sampled targets for `training.losses`;
  `call(training=False)` returns detections (see `detect`).
  """

  def __init__(self, backbone, fpn, rpn_head, box_head, box_predictor, mask_head,
               keypoint_head=None, *,
               num_classes: int, image_size: Sequence[int], min_level: int = 2,
               max_level: int = 6, aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
               anchor_size: float = 8.0, anchor_scales: Sequence[float] = (1.0,),
               rpn_pre_nms_topk_train: int = 2000,
               rpn_post_nms_topk_train: int = 1000, rpn_pre_nms_topk_test: int = 1000,
               rpn_post_nms_topk_test: int = 1000, rpn_nms_threshold: float = 0.7,
               roi_samples_per_image: int = 512, roi_positive_fraction: float = 0.25,
               mask_rois_per_image: Optional[int] = None,
               box_pool_size: int = 7, mask_pool_size: int = 14, sampling_ratio: int = 2,
               detections_per_image: int = 100, score_threshold: float = 0.05,
               nms_threshold: float = 0.5, roi_chunk_mb: Optional[float] = 64.0,
               keypoint_pool_size: int = 14, **kwargs):
    super().__init__(**kwargs)
    # Under a mixed-precision policy Keras would cast every float input to the compute dtype;
    # boxes and sizes must stay float32 (bf16 cannot hold 800 px to the pixel). The backbone
    # casts the images itself.
    self._autocast = False
    self.backbone, self.fpn, self.rpn_head = backbone, fpn, rpn_head
    self.box_head, self.box_predictor, self.mask_head = box_head, box_predictor, mask_head
    self.keypoint_head, self.keypoint_pool_size = keypoint_head, keypoint_pool_size
    self.num_classes = num_classes
    self.image_size = tuple(int(s) for s in image_size)
    self.roi_levels = list(range(min_level, min(max_level, 5) + 1))
    self.feature_levels = list(range(min_level, max_level + 1))
    # The input pipeline labels anchors with the same arguments (one source of truth).
    self.anchor_kwargs = dict(min_level=min_level, max_level=max_level,
                              aspect_ratios=tuple(aspect_ratios), anchor_size=anchor_size,
                              anchor_scales=tuple(anchor_scales))
    self.anchors = anchor_lib.multilevel_anchors(self.image_size, **self.anchor_kwargs)
    self.rpn_topk = {True: (rpn_pre_nms_topk_train, rpn_post_nms_topk_train),
                     False: (rpn_pre_nms_topk_test, rpn_post_nms_topk_test)}
    self.rpn_nms_threshold = rpn_nms_threshold
    self.roi_samples_per_image = roi_samples_per_image
    self.roi_positive_fraction = roi_positive_fraction
    # Foreground RoIs fed to the mask head: all of them (Detectron) by default; a smaller
    # number takes a uniform random subset of them, to save mask-head compute.
    self.mask_rois_per_image = min(mask_rois_per_image or roi_samples_per_image,
                                   int(roi_samples_per_image * roi_positive_fraction))
    self.box_pool_size, self.mask_pool_size = box_pool_size, mask_pool_size
    self.sampling_ratio = sampling_ratio
    self.detections_per_image = detections_per_image
    self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
    # Inference pools RoIs in chunks whose bilinear samples fit in this budget (None: all at
    # once); bounds the peak memory of serving and evaluation.
    self.roi_chunk_bytes = int(roi_chunk_mb * 2 ** 20) if roi_chunk_mb else None

  def features(self, images, training):
    """images [B, H, W, 3] -> dict level -> [B, H/2^l, W/2^l, C] (FPN or backbone levels)."""
    feats = self.backbone(images, training=training)
    if self.fpn is None:
      return {l: feats[l] for l in self.feature_levels}
    return self.fpn(feats, training=training)

  def _pool(self, feats, boxes, size, training=True):
    return multilevel_roi_align({l: feats[l] for l in self.roi_levels}, boxes, size,
                                self.sampling_ratio, aligned=True,
                                max_chunk_bytes=None if training else self.roi_chunk_bytes)

  def _proposals(self, feats, image_size, training):
    scores, deltas = self.rpn_head(feats)
    pre, post = self.rpn_topk[bool(training)]
    props, valid = generate_proposals(scores, deltas, self.anchors, image_size, pre, post,
                                      self.rpn_nms_threshold)
    return scores, deltas, props, valid

  def call(self, inputs: Dict[str, tf.Tensor], training=None):
    if training:
      return self.train_outputs(inputs)
    return self.detect(inputs["images"], inputs["image_size"])

  def train_outputs(self, inputs):
    """Returns rpn logits/deltas, RoI head outputs and the targets sampled in-graph."""
    feats = self.features(inputs["images"], True)
    image_size = tf.cast(inputs["image_size"], tf.float32)
    scores, deltas, props, valid = self._proposals(feats, image_size, True)
    gt_boxes, gt_classes = inputs["gt_boxes"], inputs["gt_classes"]
    gt_valid = gt_classes > 0
    crowd = inputs["crowd_boxes"]
    crowd_valid = tf.reduce_any(crowd > 0, axis=-1)
    s = roi_sampling.sample_rois(props, valid, gt_boxes, gt_classes, gt_valid, crowd,
                                 crowd_valid, self.roi_samples_per_image,
                                 self.roi_positive_fraction, seeds=inputs.get("sample_seed"))
    pooled = self._pool(feats, s["rois"], self.box_pool_size)
    class_logits, box_deltas = self.box_predictor(self.box_head(pooled, training=True))
    levels = sorted(scores)
    outputs = dict(
        rpn_scores=tf.concat([scores[l] for l in levels], 1),
        rpn_deltas=tf.concat([deltas[l] for l in levels], 1),
        class_logits=class_logits, box_deltas=box_deltas,
        roi_classes=s["classes"], roi_box_targets=s["box_targets"], roi_weights=s["weights"],
        num_proposals=tf.reduce_sum(tf.cast(valid, tf.float32), axis=1),
        num_fg_rois=tf.reduce_sum(tf.cast(s["is_fg"], tf.float32), axis=1))
    if self.keypoint_head is not None:
      outputs.update(self._keypoint_train_outputs(feats, s, inputs["gt_keypoints"]))
    if self.mask_head is None:
      return outputs

    num_fg = self.mask_rois_per_image
    mask_rois = s["rois"][:, :num_fg]
    mask_classes = s["classes"][:, :num_fg]
    mask_feats = self._pool(feats, mask_rois, self.mask_pool_size)
    mask_logits = self.mask_head(mask_feats, training=True)
    mask_logits = _select_class(mask_logits, mask_classes)
    targets = roi_sampling.mask_targets(mask_rois, s["gt_index"][:, :num_fg], gt_boxes,
                                        inputs["gt_masks"], mask_logits.shape[2])
    outputs.update(mask_logits=mask_logits, mask_targets=targets,
                   mask_weights=tf.cast(s["is_fg"][:, :num_fg], tf.float32))
    return outputs

  def _keypoint_train_outputs(self, feats, s, gt_keypoints):
    """Heatmap logits [B, R, K, S, S] of the first R = mask_rois_per_image sampled RoIs
    (foreground first) with their targets (bins [B, R, K], weights [B, R, K]: labeled keypoints
    inside foreground RoIs)."""
    num_fg = self.mask_rois_per_image
    rois = s["rois"][:, :num_fg]
    logits = self.keypoint_head(self._pool(feats, rois, self.keypoint_pool_size), training=True)
    matched = tf.gather(gt_keypoints, s["gt_index"][:, :num_fg], batch_dims=1)
    bins, valid = keypoint_lib.keypoint_targets(matched, rois, logits.shape[-1])
    valid *= tf.cast(s["is_fg"][:, :num_fg], tf.float32)[..., None]
    return dict(keypoint_logits=logits, keypoint_targets=bins, keypoint_weights=valid)

  def detect(self, images, image_size):
    """Inference on padded images [B, H, W, 3] with resized sizes [B, 2].

    Returns dict: boxes [B, D, 4] yxyx in resized-image pixels, scores [B, D],
    classes [B, D] int32 contiguous 1..K-1, num_detections [B] int32,
    masks [B, D, 28, 28] float probabilities relative to each box (absent without a mask
    head), keypoints [B, D, K, 3] (x, y, score) in resized-image pixels (with a keypoint
    head).
    """
    feats = self.features(images, False)
    image_size = tf.cast(image_size, tf.float32)
    _, _, props, valid = self._proposals(feats, image_size, False)
    pooled = self._pool(feats, props, self.box_pool_size, training=False)
    class_logits, box_deltas = self.box_predictor(self.box_head(pooled, training=False))
    det = postprocess.detect_boxes(props, valid, class_logits, box_deltas, image_size,
                                   self.score_threshold, self.nms_threshold,
                                   self.detections_per_image)
    if self.keypoint_head is not None:
      logits = self.keypoint_head(
          self._pool(feats, det["boxes"], self.keypoint_pool_size, training=False),
          training=False)
      det["keypoints"] = keypoint_lib.decode_heatmaps(logits, det["boxes"])
    if self.mask_head is None:
      return det
    mask_feats = self._pool(feats, det["boxes"], self.mask_pool_size, training=False)
    mask_logits = _select_class(self.mask_head(mask_feats, training=False), det["classes"])
    det["masks"] = tf.sigmoid(tf.cast(mask_logits, tf.float32))
    return det


def _select_class(mask_logits, classes):
  """[B, R, h, w, K] logits, [B, R] class -> [B, R, h, w] logits of that class."""
  logits = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
  return tf.gather(logits, classes, axis=2, batch_dims=2)
