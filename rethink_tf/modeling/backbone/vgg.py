"""VGG-16 conv body for the original Faster R-CNN layout (no normalization, no FPN).

The paper's "models without BN/GN" experiment trains VGG-16 Faster R-CNN from scratch with
MSRA init. The body is Detectron's `add_VGG16_conv5_body`: 13 3x3 convs with bias and ReLU,
max-pool 2x2 after conv1..conv4 (so conv5_3 has stride 16) and no pool5; the RPN and the
RoI head both read conv5_3.
"""

from typing import Dict, Optional

import tensorflow as tf
import tf_keras

from rethink_tf.layers.conv_norm import msra_fan_out
from rethink_tf.modeling.backbone import registry

# (channels, convs) per block conv1..conv5.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
OUTPUT_LEVEL = 4  # conv5_3 has stride 2**4 = 16


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class VGG16(tf_keras.layers.Layer):
  """VGG-16 conv1_1 .. conv5_3.

  Input: [B, H, W, 3] float, H and W multiples of 16. Output: {4: conv5_3 [B, H/16, W/16,
  512 m]} where m = width_multiplier (1 for the real network; smaller for tests).

  freeze_at: 0 trains everything (scratch); k >= 1 freezes conv1..conv{k} (Detectron's
  ImageNet fine-tuning stops gradients after pool2, i.e. freeze_at=2).
  """

  def __init__(self,
               freeze_at: int = 0,
               width_multiplier: float = 1.0,
               norm: Optional[str] = None,
               **kwargs):
    super().__init__(**kwargs)
    if norm is not None:
      raise ValueError(f"VGG-16 Faster R-CNN has no normalization layers; got norm={norm!r} "
                       "(bind build_model.norm = None)")
    self._cfg = dict(freeze_at=freeze_at, width_multiplier=width_multiplier)
    self.freeze_at = freeze_at
    self.norm = None
    self.blocks = []
    for b, (channels, count) in enumerate(VGG16_BLOCKS):
      convs = [
          tf_keras.layers.Conv2D(int(channels * width_multiplier),
                                 3,
                                 padding="same",
                                 activation="relu",
                                 kernel_initializer=msra_fan_out(),
                                 name=f"conv{b + 1}_{i + 1}") for i in range(count)
      ]
      for conv in convs:
        conv.trainable = freeze_at < b + 1
      self.blocks.append(convs)
    self.pool = tf_keras.layers.MaxPool2D(2, 2, padding="valid")
    self.out_channels = {OUTPUT_LEVEL: int(512 * width_multiplier)}

  def weight_convention(self):
    return {}

  def call(self, images, training=None) -> Dict[int, tf.Tensor]:
    x = images
    for b, convs in enumerate(self.blocks):
      for conv in convs:
        x = conv(x)
      if b < len(self.blocks) - 1:
        x = self.pool(x)
      if self.freeze_at == b + 1:
        x = tf.stop_gradient(x)
    return {OUTPUT_LEVEL: x}

  def get_config(self):
    return {**super().get_config(), **self._cfg}


@registry.register("vgg16")
def build_vgg16(s: registry.BackboneSettings) -> VGG16:
  return VGG16(freeze_at=s.freeze_at,
               width_multiplier=s.width_multiplier,
               norm=s.norm,
               name="backbone")
