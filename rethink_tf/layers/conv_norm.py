"""Conv2D followed by an optional norm and activation; the unit every block is made of."""

from typing import Optional

import tensorflow as tf
import tf_keras

from rethink_tf.layers.norm import get_norm


def msra_fan_out():
  """He (MSRA) init with fan_out, as Detectron/detectron2 use for scratch training."""
  return tf_keras.initializers.VarianceScaling(scale=2.0,
                                               mode="fan_out",
                                               distribution="untruncated_normal")


def c2_xavier_fill():
  """Caffe2 XavierFill (uniform, fan_in, gain 1): Detectron's FPN and fc init."""
  return tf_keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


# Initializers are made fresh for every layer: one shared unseeded instance would give every
# layer of the same shape identical weights.
INITIALIZERS = {"msra": msra_fan_out, "xavier": c2_xavier_fill}


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class ConvNorm(tf_keras.layers.Layer):
  """conv(k, stride, groups) -> norm -> activation. Input [B,H,W,Cin] -> [B,H',W',filters].

  The conv has no bias when a norm follows (detectron2 `use_bias = norm == ""`). Padding is
  symmetric (k // 2, as torch), not TF "same", so strided outputs line up with PyTorch weights.
  """

  def __init__(self,
               filters: int,
               kernel_size: int = 3,
               strides: int = 1,
               groups: int = 1,
               norm: Optional[str] = None,
               activation: Optional[str] = "relu",
               gn_num_groups: int = 32,
               kernel_init: str = "msra",
               **kwargs):
    super().__init__(**kwargs)
    self.filters, self.kernel_size = filters, kernel_size
    self.strides, self.groups = strides, groups
    self.norm_name, self.activation, self.gn_num_groups = norm, activation, gn_num_groups
    self.kernel_init = kernel_init
    pad = kernel_size // 2
    self.pad = tf_keras.layers.ZeroPadding2D(pad) if (pad and strides > 1) else None
    self.conv = tf_keras.layers.Conv2D(filters,
                                       kernel_size,
                                       strides=strides,
                                       groups=groups,
                                       padding="valid" if self.pad is not None else "same",
                                       use_bias=norm in (None, "", "none"),
                                       kernel_initializer=INITIALIZERS[kernel_init](),
                                       name="conv")
    self.norm = get_norm(norm, filters, name="norm", num_groups=gn_num_groups)

  def call(self, x, training=None):
    if self.pad is not None:
      x = self.pad(x)
    x = self.conv(x)
    if self.norm is not None:
      x = self.norm(x, training=training)
    if self.activation == "relu":
      x = tf.nn.relu(x)
    return x

  def get_config(self):
    return {
        **super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
        "strides": self.strides, "groups": self.groups, "norm": self.norm_name,
        "activation": self.activation, "gn_num_groups": self.gn_num_groups,
        "kernel_init": self.kernel_init
    }
