"""Keypoints for Keypoint R-CNN: COCO's person keypoints, horizontal flip, heatmap targets
and heatmap decoding (Mask R-CNN, He et al. 2017, Sec. 5; Detectron's keypoint head).

A keypoint is (x, y, v) in image pixels, v = 0 unlabeled, 1 labeled but hidden, 2 visible
(COCO). Every tensor here has a static shape: R RoIs (padded), K keypoints, S x S heatmaps.

Targets discretize a labeled keypoint inside its RoI [x1, x2) x [y1, y2) to one of S x S bins
(a keypoint exactly on the far edge goes to the last bin), as Detectron does; the loss is a
softmax over the S * S positions of each keypoint. Decoding takes each heatmap's argmax and
returns the centre of that bin in image pixels: a one-hot heatmap at a keypoint's bin decodes
to within half a bin of the keypoint, and exactly to a keypoint at a bin centre. (Detectron
first resizes each RoI's heatmaps to the RoI's own pixel size, a shape that depends on the
data; the bin centre keeps the graph static, at half a bin of resolution: under 1 px for RoIs
up to 56 px at S = 56.)
"""

from typing import Sequence, Tuple

import tensorflow as tf

COCO_PERSON_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                         "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
                         "right_ankle")


def flip_permutation(names: Sequence[str]) -> Tuple[int, ...]:
  """The index each keypoint takes after a horizontal flip: 'left_x' <-> 'right_x'."""
  index = {n: i for i, n in enumerate(names)}
  out = []
  for n in names:
    if n.startswith("left_"):
      out.append(index.get("right_" + n[5:], index[n]))
    elif n.startswith("right_"):
      out.append(index.get("left_" + n[6:], index[n]))
    else:
      out.append(index[n])
  return tuple(out)


def flip_keypoints(keypoints: tf.Tensor, image_width, permutation: Sequence[int]) -> tf.Tensor:
  """Mirrors keypoints [..., K, 3] (x, y, v) in an image of width `image_width` (the box flip's
  convention, x -> width - x) and swaps left and right; unlabeled keypoints stay unlabeled."""
  keypoints = tf.gather(keypoints, list(permutation), axis=-2)
  x = tf.cast(image_width, keypoints.dtype) - keypoints[..., 0]
  x = tf.where(keypoints[..., 2] > 0, x, tf.zeros_like(x))
  return tf.stack([x, keypoints[..., 1], keypoints[..., 2]], axis=-1)


def keypoint_targets(keypoints: tf.Tensor, rois_yxyx: tf.Tensor,
                     heatmap_size: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Heatmap targets of the keypoints matched to each RoI.

  Args:
    keypoints: [..., R, K, 3] float (x, y, v) in image pixels.
    rois_yxyx: [..., R, 4] float RoIs in the same pixels.
    heatmap_size: S.
  Returns:
    (bin [..., R, K] int32: y_bin * S + x_bin, valid [..., R, K] float32: 1 where the keypoint
    is labeled (v > 0) and inside its RoI, else 0 (bin 0)).
  """
  x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
  y1, x1, y2, x2 = (rois_yxyx[..., i:i + 1] for i in range(4))
  s = float(heatmap_size)

  def to_bin(p, lo, hi):
    scaled = tf.floor((p - lo) * s / tf.maximum(hi - lo, 1e-6))
    scaled = tf.where(tf.equal(p, hi), s - 1.0, scaled)  # the far edge is in the last bin
    return scaled

  bx, by = to_bin(x, x1, x2), to_bin(y, y1, y2)
  inside = (bx >= 0) & (by >= 0) & (bx < s) & (by < s)
  valid = inside & (v > 0)
  index = tf.where(valid, tf.cast(by * s + bx, tf.int32), 0)
  return index, tf.cast(valid, tf.float32)


def keypoint_loss(logits: tf.Tensor,
                  target_bins: tf.Tensor,
                  valid: tf.Tensor,
                  normalizer=None) -> tf.Tensor:
  """Softmax cross-entropy over the S x S positions of each labeled keypoint.

  Args:
    logits: [N, K, S, S] float.
    target_bins, valid: [N, K] from `keypoint_targets`.
    normalizer: divides the summed loss; default the number of valid keypoints (at least 1).
  """
  n, k = tf.shape(logits)[0], tf.shape(logits)[1]
  flat = tf.reshape(tf.cast(logits, tf.float32), [n, k, -1])
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(target_bins, flat)
  total = tf.reduce_sum(ce * valid)
  if normalizer is None:
    normalizer = tf.maximum(tf.reduce_sum(valid), 1.0)
  return total / normalizer


def decode_heatmaps(logits: tf.Tensor, rois_yxyx: tf.Tensor) -> tf.Tensor:
  """Keypoints from heatmap logits: each heatmap's argmax bin, as the bin centre in pixels.

  Args:
    logits: [..., R, K, S, S] float.
    rois_yxyx: [..., R, 4] float RoIs in image pixels.
  Returns:
    [..., R, K, 3] float32 (x, y, score), score = the argmax logit (Detectron's keypoint score).
  """
  shape = tf.shape(logits)
  s = logits.shape[-1]
  flat = tf.reshape(tf.cast(logits, tf.float32), tf.concat([shape[:-2], [-1]], 0))
  best = tf.argmax(flat, axis=-1, output_type=tf.int32)
  score = tf.reduce_max(flat, axis=-1)
  bx = tf.cast(best % s, tf.float32)
  by = tf.cast(best // s, tf.float32)
  y1, x1, y2, x2 = (rois_yxyx[..., i:i + 1] for i in range(4))
  x = x1 + (bx + 0.5) * (x2 - x1) / s
  y = y1 + (by + 0.5) * (y2 - y1) / s
  return tf.stack([x, y, score], axis=-1)
