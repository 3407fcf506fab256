"""Keypoint names and the horizontal flip of keypoint annotations (the input pipeline's flip
augmentation and test-time augmentation).

A keypoint is (x, y, v) in image pixels, v = 0 unlabeled, 1 labeled but hidden, 2 visible
(COCO).
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
