"""One normalization factory for every block (detectron2 `get_norm`).

`norm` is one of "GN", "SyncBN", "BN", "FrozenBN" or None. The builder passes a single value to
the stem, the bottlenecks, the shortcuts, the FPN and the heads.
"""

from typing import Optional

import tensorflow as tf
import tf_keras

NORMS = ("GN", "SyncBN", "BN", "FrozenBN", None)

# Detectron's constants: GN with 32 groups and eps 1e-5; BN momentum 0.9 (torch 0.1), eps 1e-5.
GN_EPSILON = 1e-5
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class FrozenBatchNorm(tf_keras.layers.Layer):
  """BatchNorm with fixed affine transform: y = (x - mean) / sqrt(var + eps) * gamma + beta.

  All four vectors are non-trainable and the layer always uses them (also in training), the way
  Detectron's AffineChannel / detectron2's FrozenBatchNorm2d behave for ImageNet fine-tuning.
  Input and output: [..., C] float.
  """

  def __init__(self, epsilon: float = BN_EPSILON, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def build(self, input_shape):
    c = int(input_shape[-1])
    self.gamma = self.add_weight("gamma", [c], initializer="ones", trainable=False)
    self.beta = self.add_weight("beta", [c], initializer="zeros", trainable=False)
    self.moving_mean = self.add_weight("moving_mean", [c], initializer="zeros", trainable=False)
    self.moving_variance = self.add_weight("moving_variance", [c],
                                           initializer="ones",
                                           trainable=False)
    super().build(input_shape)

  def call(self, x):
    scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
    bias = self.beta - self.moving_mean * scale
    return x * tf.cast(scale, x.dtype) + tf.cast(bias, x.dtype)

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class GroupNorm(tf_keras.layers.GroupNormalization):
  """`tf_keras.layers.GroupNormalization` with a faster NHWC forward pass.

  Same variables, config and result (groups of consecutive channels, biased variance over
  (H, W, C/G), as torch.nn.GroupNorm); the Keras layer computes masked `weighted_moments` and
  applies the affine transform in several passes, which made GN the largest cost of the
  train step on CPU. Here: plain two-pass moments, then one fused multiply-add.
  Input and output [B, H, W, C] (other ranks fall back to the Keras implementation).
  """

  def call(self, inputs, mask=None):
    if inputs.shape.rank != 4 or self.axis not in (-1, 3) or mask is not None:
      return super().call(inputs, mask=mask)
    c = inputs.shape[-1]
    g = self.groups
    shape = tf.shape(inputs)
    x = tf.reshape(inputs, [shape[0], shape[1], shape[2], g, c // g])
    x32 = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x32, axes=[1, 2, 4], keepdims=True)
    inv = tf.math.rsqrt(var + self.epsilon)  # [B, 1, 1, G, 1]
    gamma = tf.reshape(tf.cast(self.gamma, tf.float32), [1, 1, 1, g, c // g])
    beta = tf.reshape(tf.cast(self.beta, tf.float32), [1, 1, 1, g, c // g])
    scale = inv * gamma  # [B, 1, 1, G, C/G]
    offset = beta - mean * scale
    y = x * tf.cast(scale, x.dtype) + tf.cast(offset, x.dtype)
    return tf.reshape(y, shape)


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class BatchNorm(tf_keras.layers.BatchNormalization):
  """`tf_keras.layers.BatchNormalization` (not synchronized) that runs TF's fused kernels on
  NHWC maps and keeps the moving variance of the *biased* batch variance.

  The Keras layer has two paths and neither fits: `fused=True` feeds the moving variance with
  the Bessel-corrected variance (torch and Keras' own SyncBN use the biased one, so BN on one
  replica would drift from SyncBN on several), while `fused=False` computes the moments and the
  normalization op by op, forward and backward (several passes over every activation; and in
  inference it leaves a Mul/Add after every conv that the graph optimizer cannot fold, where a
  fused BN is folded into the conv; measured in benchmarks/README.md). Here: FusedBatchNormV3
  forward and gradient, the returned variance times (n - 1) / n for the moving average, and the
  inference form that grappler fuses into the preceding conv. Same variables, checkpoints and
  config as the Keras layer.
  Input and output [B, H, W, C] (other ranks and symbolic `training` use the Keras path).
  """

  def call(self, inputs, training=None, mask=None):
    training = self._get_training_value(training)
    if (inputs.shape.rank != 4 or self.axis not in ([3], [-1]) or mask is not None or
        self.synchronized or not isinstance(training, bool)):
      return super().call(inputs, training=training, mask=mask)
    gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([inputs.shape[-1]])
    beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([inputs.shape[-1]])
    if not training:
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(inputs,
                                                 gamma,
                                                 beta,
                                                 mean=self.moving_mean,
                                                 variance=self.moving_variance,
                                                 epsilon=self.epsilon,
                                                 is_training=False)
      return y
    y, mean, var = tf.compat.v1.nn.fused_batch_norm(inputs,
                                                    gamma,
                                                    beta,
                                                    epsilon=self.epsilon,
                                                    is_training=True)
    shape = tf.shape(inputs)
    n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
    var = var * (n - 1.0) / tf.maximum(n, 1.0)  # undo the op's Bessel correction
    decay = 1.0 - self.momentum
    self.moving_mean.assign_sub((self.moving_mean - tf.stop_gradient(mean)) * decay)
    self.moving_variance.assign_sub((self.moving_variance - tf.stop_gradient(var)) * decay)
    return y


def get_norm(norm: Optional[str],
             channels: int,
             name: Optional[str] = None,
             num_groups: int = 32) -> Optional[tf_keras.layers.Layer]:
  """Returns the normalization layer for `norm` over `channels` channels, or None.

  Args:
    norm: "GN", "SyncBN", "BN", "FrozenBN" or None (or "" / "none").
    channels: number of channels of the normalized tensor (last axis, NHWC).
    name: layer name.
    num_groups: GN groups (32 in the paper). Tiny test models with fewer channels bind a
      smaller value through gin; the channel count must be divisible by it.
  """
  if norm in (None, "", "none", "None"):
    return None
  if norm == "GN":
    if channels % num_groups:
      raise ValueError(f"GroupNorm '{name}': {channels} channels are not divisible by "
                       f"{num_groups} groups; bind a width that is a multiple of the groups or "
                       f"a smaller `gn_num_groups`.")
    # Groups are consecutive channels, as torch.nn.GroupNorm forms them.
    return GroupNorm(groups=num_groups, epsilon=GN_EPSILON, name=name)
  if norm == "SyncBN":
    return tf_keras.layers.BatchNormalization(momentum=BN_MOMENTUM,
                                              epsilon=BN_EPSILON,
                                              synchronized=True,
                                              name=name)
  if norm == "BN":
    # Fused kernels with the biased variance in the moving average: BN over 2 images on one
    # replica updates as SyncBN over 2 replicas of 1 image (see BatchNorm).
    return BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, fused=False, name=name)
  if norm == "FrozenBN":
    return FrozenBatchNorm(name=name)
  raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
