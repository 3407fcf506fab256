"""Mask R-CNN with FPN, assembled from injected parts (detectron2 `GeneralizedRCNN`).

Without a mask head the same class is Faster R-CNN; without an FPN the RPN and the RoI head
read the backbone's single output level (the original Faster R-CNN on VGG-16 conv5).
"""

from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from rethink_tf.layers.roi_align import multilevel_roi_align
from rethink_tf.modeling import anchors as anchor_lib
from rethink_tf.modeling import cascade as cascade_lib
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
  `cascade_heads`: (box head, class-agnostic box predictor) of Cascade R-CNN's stages 2.. (stage
  1 is box_head/box_predictor, class-agnostic too); `cascade_ious` and `cascade_box_weights`
  give each stage's foreground IoU and box coding. The non-trainable `cascade_active` variable
  (checkpointed) turns the later stages on: while it is False they compute but their losses
  are zero and inference uses stage 1 alone (the paper adds cascade late in training).

  Inputs (dict, static shapes; B images padded to `image_size`):
    images [B, H, W, 3] float; image_size [B, 2] float (h, w of the resized image before
    padding). Training also needs gt_boxes [B, M, 4], gt_classes [B, M] int32 (0 = padding),
    gt_masks [B, M, S, S] (box-relative), crowd_boxes [B, C, 4] (zeros = padding), and
    optionally sample_seed [B, 2] int (per-image seeds of the RoI sampling).
  `call(training=True)` returns raw outputs and the sampled targets for `training.losses`;
  `call(training=False)` returns detections (see `detect`).
  """

  def __init__(self,
               backbone,
               fpn,
               rpn_head,
               box_head,
               box_predictor,
               mask_head,
               keypoint_head=None,
               *,
               num_classes: int,
               image_size: Sequence[int],
               min_level: int = 2,
               max_level: int = 6,
               aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
               anchor_size: float = 8.0,
               anchor_scales: Sequence[float] = (1.0,),
               rpn_pre_nms_topk_train: int = 2000,
               rpn_post_nms_topk_train: int = 1000,
               rpn_pre_nms_topk_test: int = 1000,
               rpn_post_nms_topk_test: int = 1000,
               rpn_nms_threshold: float = 0.7,
               roi_samples_per_image: int = 512,
               roi_positive_fraction: float = 0.25,
               mask_rois_per_image: Optional[int] = None,
               box_pool_size: int = 7,
               mask_pool_size: int = 14,
               keypoint_pool_size: int = 14,
               box_sampling_ratio: int = 2,
               mask_sampling_ratio: int = 2,
               keypoint_sampling_ratio: int = 2,
               max_adaptive_samples: int = 4,
               roi_align_aligned: bool = True,
               roi_level_epsilon: Optional[float] = None,
               anchor_offset: float = 0.5,
               box_plus_one: bool = False,
               detections_per_image: int = 100,
               score_threshold: float = 0.05,
               nms_threshold: float = 0.5,
               roi_chunk_mb: Optional[float] = 64.0,
               cascade_heads: Sequence[Tuple[tf_keras.layers.Layer, tf_keras.layers.Layer]] = (),
               cascade_ious: Sequence[float] = (0.5,),
               cascade_box_weights: Sequence[Sequence[float]] = (roi_sampling.ROI_BOX_WEIGHTS,),
               **kwargs):
    super().__init__(**kwargs)
    # Under a mixed-precision policy Keras would cast every float input to the compute dtype;
    # boxes and sizes must stay float32 (bf16 cannot hold 800 px to the pixel). The backbone
    # casts the images itself.
    self._autocast = False
    self.backbone, self.fpn, self.rpn_head = backbone, fpn, rpn_head
    self.box_head, self.box_predictor, self.mask_head = box_head, box_predictor, mask_head
    self.keypoint_head = keypoint_head
    self.num_classes = num_classes
    self.num_stages = 1 + len(cascade_heads)
    if len(cascade_ious) < self.num_stages or len(cascade_box_weights) < self.num_stages:
      raise ValueError(f"{self.num_stages} box stages need as many cascade_ious "
                       f"({cascade_ious}) and cascade_box_weights ({cascade_box_weights})")
    self.cascade_box_heads = [h for h, _ in cascade_heads]
    self.cascade_box_predictors = [p for _, p in cascade_heads]
    self.cascade_ious = tuple(float(v) for v in cascade_ious[:self.num_stages])
    self.cascade_box_weights = tuple(
        tuple(float(x) for x in w) for w in cascade_box_weights[:self.num_stages])
    if self.num_stages > 1:
      self.cascade_active = tf.Variable(True, trainable=False, name="cascade_active")
    self.image_size = tuple(int(s) for s in image_size)
    self.roi_levels = list(range(min_level, min(max_level, 5) + 1))
    self.feature_levels = list(range(min_level, max_level + 1))
    # Detectron's "+1" box convention (converted Detectron models; see layers/box_ops.py):
    # 1.0 or 0.0, added to widths in box coding, clipping, NMS and level assignment.
    self.box_plus_one = 1.0 if box_plus_one else 0.0
    # The input pipeline labels anchors with the same arguments (one source of truth).
    self.anchor_kwargs = dict(min_level=min_level,
                              max_level=max_level,
                              aspect_ratios=tuple(aspect_ratios),
                              anchor_size=anchor_size,
                              anchor_scales=tuple(anchor_scales),
                              offset=anchor_offset,
                              detectron_rounding=bool(box_plus_one))
    self.anchors = anchor_lib.multilevel_anchors(self.image_size, **self.anchor_kwargs)
    self.rpn_topk = {
        True: (rpn_pre_nms_topk_train, rpn_post_nms_topk_train),
        False: (rpn_pre_nms_topk_test, rpn_post_nms_topk_test)
    }
    self.rpn_nms_threshold = rpn_nms_threshold
    self.roi_samples_per_image = roi_samples_per_image
    self.roi_positive_fraction = roi_positive_fraction
    # Foreground RoIs fed to the mask head: all of them (Detectron) by default; a smaller
    # number takes a uniform random subset of them, to save mask-head compute.
    self.mask_rois_per_image = min(mask_rois_per_image or roi_samples_per_image,
                                   int(roi_samples_per_image * roi_positive_fraction))
    self.box_pool_size, self.mask_pool_size = box_pool_size, mask_pool_size
    self.keypoint_pool_size = keypoint_pool_size
    # RoIAlign per head: (output size, samples per bin; 0 = adaptive, detectron2's model zoo).
    self.poolers = {
        "box": (box_pool_size, box_sampling_ratio), "mask": (mask_pool_size, mask_sampling_ratio),
        "keypoint": (keypoint_pool_size, keypoint_sampling_ratio)
    }
    self.pooler_kwargs = dict(aligned=roi_align_aligned,
                              level_epsilon=roi_level_epsilon,
                              box_plus_one=self.box_plus_one,
                              max_adaptive_samples=max_adaptive_samples)
    self.detections_per_image = detections_per_image
    self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
    # Inference pools RoIs in chunks whose bilinear samples fit in this budget (None: all at
    # once); bounds the peak memory of serving and evaluation.
    self.roi_chunk_bytes = int(roi_chunk_mb * 2**20) if roi_chunk_mb else None

  def features(self, images, training):
    """images [B, H, W, 3] -> dict level -> [B, H/2^l, W/2^l, C] (FPN or backbone levels)."""
    feats = self.backbone(images, training=training)
    if self.fpn is None:
      return {l: feats[l] for l in self.feature_levels}
    return self.fpn(feats, training=training)

  def pool_rois(self, feats, boxes, head: str, training=True):
    """RoIAlign of boxes [B, N, 4] for `head` ("box", "mask", "keypoint") -> [B, N, S, S, C]."""
    size, sampling_ratio = self.poolers[head]
    return multilevel_roi_align({l: feats[l] for l in self.roi_levels},
                                boxes,
                                size,
                                sampling_ratio,
                                max_chunk_bytes=None if training else self.roi_chunk_bytes,
                                **self.pooler_kwargs)

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
    """Returns rpn logits/deltas, RoI head outputs and the targets sampled in-graph."""
    feats = self.features(inputs["images"], True)
    image_size = tf.cast(inputs["image_size"], tf.float32)
    scores, deltas, props, valid = self.proposals(feats, image_size, True)
    gt_boxes, gt_classes = inputs["gt_boxes"], inputs["gt_classes"]
    gt_valid = gt_classes > 0
    crowd = inputs["crowd_boxes"]
    crowd_valid = tf.reduce_any(crowd > 0, axis=-1)
    s = roi_sampling.sample_rois(props,
                                 valid,
                                 gt_boxes,
                                 gt_classes,
                                 gt_valid,
                                 crowd,
                                 crowd_valid,
                                 self.roi_samples_per_image,
                                 self.roi_positive_fraction,
                                 fg_iou=self.cascade_ious[0],
                                 seeds=inputs.get("sample_seed"),
                                 box_weights=self.cascade_box_weights[0])
    pooled = cascade_lib.stage_input(self, self.pool_rois(feats, s["rois"], "box"))
    class_logits, box_deltas = self.box_predictor(self.box_head(pooled, training=True))
    levels = sorted(scores)
    outputs = dict(rpn_scores=tf.concat([scores[l] for l in levels], 1),
                   rpn_deltas=tf.concat([deltas[l] for l in levels], 1),
                   class_logits=class_logits,
                   box_deltas=box_deltas,
                   roi_classes=s["classes"],
                   roi_box_targets=s["box_targets"],
                   roi_weights=s["weights"],
                   num_proposals=tf.reduce_sum(tf.cast(valid, tf.float32), axis=1),
                   num_fg_rois=tf.reduce_sum(tf.cast(s["is_fg"], tf.float32), axis=1))
    if self.num_stages > 1:
      outputs.update(
          cascade_lib.later_stage_train_outputs(self, feats, s, box_deltas, image_size, gt_boxes,
                                                gt_classes, gt_valid))
    if self.keypoint_head is not None:
      outputs.update(self._keypoint_train_outputs(feats, s, inputs["gt_keypoints"]))
    if self.mask_head is None:
      return outputs

    num_fg = self.mask_rois_per_image
    mask_rois = s["rois"][:, :num_fg]
    mask_classes = s["classes"][:, :num_fg]
    mask_feats = self.pool_rois(feats, mask_rois, "mask")
    mask_logits = self.mask_head(mask_feats, training=True)
    mask_logits = _select_class(mask_logits, mask_classes)
    targets = roi_sampling.mask_targets(mask_rois, s["gt_index"][:, :num_fg], gt_boxes,
                                        inputs["gt_masks"], mask_logits.shape[2])
    outputs.update(mask_logits=mask_logits,
                   mask_targets=targets,
                   mask_weights=tf.cast(s["is_fg"][:, :num_fg], tf.float32))
    return outputs

  def _keypoint_train_outputs(self, feats, s, gt_keypoints):
    """Heatmap logits [B, R, K, S, S] of the first R = mask_rois_per_image sampled RoIs
    (foreground first) with their targets (bins [B, R, K], weights [B, R, K]: labeled keypoints
    inside foreground RoIs)."""
    num_fg = self.mask_rois_per_image
    rois = s["rois"][:, :num_fg]
    logits = self.keypoint_head(self.pool_rois(feats, rois, "keypoint"), training=True)
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
    boxes, probs = self.box_predictions(feats, image_size)
    det = postprocess.nms_detections(boxes, probs, self.score_threshold, self.nms_threshold,
                                     self.detections_per_image)
    return self.instance_outputs(feats, det)

  def _plus_one(self):
    """[4] offset from inclusive "+1" boxes to continuous ones (zeros by default)."""
    return tf.constant([0.0, 0.0, self.box_plus_one, self.box_plus_one])

  def box_predictions(self, feats, image_size):
    """Every proposal's per-class boxes [B, N, K-1, 4] (resized-image pixels, continuous
    coordinates) and scores [B, N, K-1], before NMS. Cascade: the last stage's boxes and the
    stages' mean score. A "+1" (inclusive) box is returned as the [x1, x2 + 1) it spans, which
    also gives NMS Detectron's "+1" overlaps."""
    _, _, props, valid = self.proposals(feats, image_size, False)
    rois, deltas, all_probs = props, None, []
    for k in range(self.num_stages):
      head, predictor = cascade_lib.stage(self, k)
      if k:
        rois = cascade_lib.refine_boxes(rois, deltas, self.cascade_box_weights[k - 1], image_size)
      pooled = self.pool_rois(feats, rois, "box", training=False)
      logits, deltas = predictor(head(pooled, training=False))
      boxes, probs = postprocess.class_boxes(rois, valid, logits, deltas, image_size,
                                             self.cascade_box_weights[k], self.box_plus_one)
      all_probs.append(probs)
      if k == 0:
        first_boxes = boxes
    if self.num_stages == 1:
      return boxes + self._plus_one(), probs
    active = self.cascade_active
    return (tf.where(active, boxes, first_boxes),
            tf.where(active,
                     tf.add_n(all_probs) / self.num_stages, all_probs[0]))

  def instance_outputs(self, feats, det):
    """Adds masks and keypoints of the detected boxes to `det` (see `detect`)."""
    if self.keypoint_head is not None:
      det["keypoints"] = self.keypoint_points(feats, det["boxes"])
    if self.mask_head is None:
      return det
    det["masks"] = self.mask_probs(feats, det["boxes"], det["classes"])
    return det

  def keypoint_points(self, feats, boxes):
    """Keypoints [B, D, K, 3] (x, y, score; resized-image pixels) of boxes [B, D, 4]."""
    logits = self.keypoint_head(self.pool_rois(feats, boxes, "keypoint", training=False),
                                training=False)
    return keypoint_lib.decode_heatmaps(logits, boxes)

  def mask_probs(self, feats, boxes, classes):
    """Mask probabilities [B, D, 28, 28] relative to boxes [B, D, 4] for classes [B, D]."""
    # Detectron pools masks on its inclusive boxes.
    mask_feats = self.pool_rois(feats, boxes - self._plus_one(), "mask", training=False)
    mask_logits = _select_class(self.mask_head(mask_feats, training=False), classes)
    return tf.sigmoid(tf.cast(mask_logits, tf.float32))


def _spatial_shape(x):
  """(H, W) of [B, H, W, C]: Python ints where the traced shape knows them, else tensors."""
  dynamic = tf.shape(x)
  return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (1, 2))


def _select_class(mask_logits, classes):
  """[B, R, h, w, K] logits, [B, R] class -> [B, R, h, w] logits of that class."""
  logits = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
  return tf.gather(logits, classes, axis=2, batch_dims=2)
