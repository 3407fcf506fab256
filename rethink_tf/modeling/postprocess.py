"""Inference post-processing: class-specific box decoding, per-class NMS, top detections."""

import tensorflow as tf

from rethink_tf.layers import box_ops
from rethink_tf.modeling.roi_sampling import ROI_BOX_WEIGHTS


def detect_boxes(proposals, proposal_valid, class_logits, box_deltas, image_size,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5,
                 max_detections: int = 100):
  """Detectron's test-time rule: softmax, decode per class, clip, per-class NMS, keep top 100.

  Args:
    proposals: [B, N, 4]; proposal_valid: [B, N] bool.
    class_logits: [B, N, K]; box_deltas: [B, N, K, 4]; image_size: [B, 2] (h, w).
  Returns dict:
    boxes [B, D, 4] pixels of the resized image, scores [B, D], classes [B, D] int32 in
    1..K-1 (contiguous), num_detections [B] int32. Padding entries have score 0.
  """
  probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]
  probs = probs * tf.cast(proposal_valid, tf.float32)[..., None]
  deltas = tf.cast(box_deltas, tf.float32)[:, :, 1:, :]
  boxes = box_ops.decode_boxes(deltas, proposals[:, :, None, :], ROI_BOX_WEIGHTS)
  boxes = box_ops.clip_boxes(boxes, tf.cast(image_size, tf.float32)[:, None, None, :])
  nmsed_boxes, nmsed_scores, nmsed_classes, num = tf.image.combined_non_max_suppression(
      boxes, probs, max_output_size_per_class=max_detections, max_total_size=max_detections,
      iou_threshold=nms_threshold, score_threshold=score_threshold, pad_per_class=False,
      clip_boxes=False)
  return dict(boxes=nmsed_boxes, scores=nmsed_scores,
              classes=tf.cast(nmsed_classes, tf.int32) + 1, num_detections=num)
