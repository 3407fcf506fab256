"""Static-shape non-maximum suppression (TPU/XLA friendly).

A box is suppressed when its IoU with a kept, higher-scoring box is > `iou_threshold`
(torchvision semantics). Per-class ("batched") NMS offsets each class into its own region
of the plane, so one NMS call handles every class (torchvision `batched_nms` does the same).
"""

import tensorflow as tf


def nms_padded(boxes_yxyx,
               scores,
               max_output_size: int,
               iou_threshold: float,
               score_threshold: float = float("-inf")):
  """Batched NMS.

  Args:
    boxes_yxyx: [B, N, 4] float boxes.
    scores: [B, N] float scores.
  Returns:
    indices: [B, max_output_size] int32 indices into N, sorted by decreasing score; padding
      entries are 0 and must be masked with `valid`.
    valid: [B, max_output_size] bool.
  """
  idx, num = tf.image.non_max_suppression_padded(tf.cast(boxes_yxyx, tf.float32),
                                                 tf.cast(scores, tf.float32),
                                                 max_output_size,
                                                 iou_threshold=iou_threshold,
                                                 score_threshold=score_threshold,
                                                 pad_to_max_output_size=True)
  valid = tf.range(max_output_size)[None, :] < num[:, None]
  return tf.where(valid, idx, 0), valid


def batched_nms_padded(boxes_yxyx,
                       scores,
                       groups,
                       max_output_size: int,
                       iou_threshold: float,
                       score_threshold: float = float("-inf")):
  """NMS applied independently within each group (class or FPN level), results merged by score.

  Args:
    boxes_yxyx: [B, N, 4]; scores: [B, N]; groups: [B, N] int group ids >= 0.
  Returns:
    indices [B, max_output_size] int32, valid [B, max_output_size] bool, as `nms_padded`.
  """
  boxes_yxyx = tf.cast(boxes_yxyx, tf.float32)
  span = tf.reduce_max(boxes_yxyx) - tf.minimum(tf.reduce_min(boxes_yxyx), 0.0) + 1.0
  offset = tf.cast(groups, tf.float32)[..., None] * span
  return nms_padded(boxes_yxyx + offset, scores, max_output_size, iou_threshold, score_threshold)
