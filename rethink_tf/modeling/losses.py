"""What every loss of the detector shares (Detectron normalizations).

Every loss is a sum over one replica's examples divided by a count over the *global* batch
(sampled anchors, sampled RoIs, foreground RoIs), summed over replicas by `global_sum`. The
replicas' losses (and gradients) then add up to the loss of the whole batch on one device,
whatever the split: 2 replicas x 1 image train exactly as 1 replica x 2 images. Each part of
the model (the RPN, each RoI branch) computes its own terms with these helpers; the model adds
them up (`MaskRCNN.compute_losses`).
"""

from typing import Callable, Optional

import tensorflow as tf

# Sums a count over all replicas (None: this replica is the whole batch).
Reducer = Optional[Callable[[tf.Tensor], tf.Tensor]]


def normalizer(count, global_sum: Reducer):
  """max(1, the global sum of `count`), without gradient."""
  count = tf.stop_gradient(count)
  if global_sum is not None:
    count = global_sum(count)
  return tf.maximum(count, 1.0)


def smooth_l1(diff, beta):
  a = tf.abs(diff)
  return tf.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def merge_rois(x):
  """[B, R, ...] -> [B*R, ...]: one batch dimension for the per-RoI layers."""
  s = tf.shape(x)
  return tf.reshape(x, tf.concat([[s[0] * s[1]], s[2:]], 0))
