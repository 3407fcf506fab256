"""Inference post-processing: per-class box decoding, per-class NMS, top detections, and the
move from the model's resized frame to the input image."""

import tensorflow as tf

from rethink_tf.layers import box_ops
from rethink_tf.layers.mask_rle import encode_masks
from rethink_tf.layers.paste_masks import paste_masks
from rethink_tf.modeling.roi_heads.sampling import ROI_BOX_WEIGHTS


def class_boxes(proposals,
                proposal_valid,
                class_logits,
                box_deltas,
                image_size,
                box_weights=ROI_BOX_WEIGHTS,
                box_plus_one: float = 0.0):
  """Per-class boxes and scores of every proposal: softmax, decode, clip (no NMS).

  `box_plus_one`: Detectron's "+1" box coding and clipping (layers/box_ops.py).

  Args:
    proposals: [B, N, 4]; proposal_valid: [B, N] bool.
    class_logits: [B, N, K]; box_deltas: [B, N, K, 4] class-specific or [B, N, 1, 4]
      class-agnostic; image_size: [B, 2] (h, w).
  Returns:
    (boxes [B, N, K-1, 4] clipped, in resized-image pixels; probs [B, N, K-1], zero for invalid
    proposals). Background (index 0) is dropped.
  """
  probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]
  probs = probs * tf.cast(proposal_valid, tf.float32)[..., None]
  deltas = tf.cast(box_deltas, tf.float32)
  deltas = deltas[:, :, 1:, :] if deltas.shape[2] > 1 else deltas
  boxes = box_ops.decode_boxes(deltas, proposals[:, :, None, :], box_weights, box_plus_one)
  boxes = box_ops.clip_boxes(boxes, tf.cast(image_size, tf.float32)[:, None, None, :], box_plus_one)
  boxes = tf.broadcast_to(boxes, tf.concat([tf.shape(probs), [4]], 0))
  return boxes, probs


def nms_detections(boxes,
                   probs,
                   score_threshold: float = 0.05,
                   nms_threshold: float = 0.5,
                   max_detections: int = 100):
  """Per-class NMS, then the top `max_detections` over all classes.

  Args: boxes [B, N, K-1, 4]; probs [B, N, K-1].
  Returns dict: boxes [B, D, 4], scores [B, D], classes [B, D] int32 in 1..K-1 (contiguous),
    num_detections [B] int32. Padding entries have score 0.
  """
  nmsed_boxes, nmsed_scores, nmsed_classes, num = tf.image.combined_non_max_suppression(
      boxes,
      probs,
      max_output_size_per_class=max_detections,
      max_total_size=max_detections,
      iou_threshold=nms_threshold,
      score_threshold=score_threshold,
      pad_per_class=False,
      clip_boxes=False)
  return dict(boxes=nmsed_boxes,
              scores=nmsed_scores,
              classes=tf.cast(nmsed_classes, tf.int32) + 1,
              num_detections=num)


def detect_boxes(proposals,
                 proposal_valid,
                 class_logits,
                 box_deltas,
                 image_size,
                 score_threshold: float = 0.05,
                 nms_threshold: float = 0.5,
                 max_detections: int = 100):
  """Detectron's test-time rule: softmax, decode per class, clip, per-class NMS, keep top 100.

  Args and returns: as `class_boxes` and `nms_detections`.
  """
  boxes, probs = class_boxes(proposals, proposal_valid, class_logits, box_deltas, image_size)
  return nms_detections(boxes, probs, score_threshold, nms_threshold, max_detections)


def to_input_image(boxes, masks, num_detections, scale, image_hw, mask_threshold: float = 0.5):
  """One image's detections, from the resized (model) frame to the input image's pixels.

  Evaluation and the exported SavedModel both call this (one rule for both).

  Args:
    boxes: [D, 4] yxyx in resized-image pixels; masks: [D, M, M] box-relative probabilities or
      None; num_detections: int scalar, valid entries first.
    scale: float32 [2], resized / input size along (y, x) (or a scalar for both);
      image_hw: [2] int, the input image's (h, w).
    mask_threshold: a pixel is in a mask when its pasted probability is >= this.
  Returns:
    (boxes [D, 4] float32 yxyx in input pixels clipped to the image, mask RLE strings [D] or
    None: COCO compressed `counts` over the whole h x w image, "" at and beyond
    num_detections; `layers/mask_rle.py`).
  """
  hw = tf.cast(image_hw, tf.float32)
  limits = tf.concat([hw, hw], 0)
  scale = tf.broadcast_to(tf.cast(scale, tf.float32), [2])
  boxes = tf.minimum(tf.maximum(tf.cast(boxes, tf.float32) / tf.tile(scale, [2]), 0.0), limits)
  if masks is None:
    return boxes, None
  return boxes, encode_masks(masks, boxes, num_detections, image_hw[0], image_hw[1], mask_threshold)


def batch_to_input_images(boxes, masks, num_detections, scales, image_hws):
  """`to_input_image` for each image of a batch.

  Args: boxes [B, D, 4], masks [B, D, M, M] or None, num_detections [B], scales [B, 2] float32,
    image_hws [B, 2] int32.
  Returns: (boxes [B, D, 4] in input pixels, mask RLE strings [B, D] or None).
  """
  if masks is None:
    return tf.map_fn(lambda a: to_input_image(a[0], None, 0, a[1], a[2])[0],
                     (boxes, scales, image_hws),
                     fn_output_signature=tf.float32), None
  return tf.map_fn(lambda a: to_input_image(*a), (boxes, masks, num_detections, scales, image_hws),
                   fn_output_signature=(tf.float32, tf.string))


def full_resolution_masks(masks,
                          boxes,
                          num_detections,
                          image_hw,
                          canvas_hw,
                          binary: bool = True,
                          mask_threshold: float = 0.5):
  """Masks pasted over a whole canvas: [D, Hc, Wc] uint8 {0, 1} or float32 probabilities.

  The cost is D x Hc x Wc whatever was detected, so the SavedModel returns these only when
  exported with them (`--mask_output=binary|probability`); thresholded, they equal the RLE
  masks of `to_input_image`. boxes: [D, 4] in input pixels (`to_input_image`'s); pixels at or
  beyond image_hw and entries at and beyond num_detections are 0.
  """
  n = tf.cast(num_detections, tf.int32)
  # Only the valid detections are pasted: full-resolution pasting dominates post-processing.
  probs = paste_masks(masks[:n], boxes[:n], image_hw[0], image_hw[1], canvas_hw[0], canvas_hw[1])
  probs = tf.pad(probs, [[0, tf.shape(masks)[0] - n], [0, 0], [0, 0]])
  if binary:
    return tf.cast(probs >= mask_threshold, tf.uint8)
  return probs
