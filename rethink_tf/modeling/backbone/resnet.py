"""ResNet and ResNeXt (one class), torchvision v1.5 / Detectron layout.

Stride in the 3x3 conv, projection shortcuts with norm, norm in the stem, every block taking
one `norm` argument. `width_multiplier` and `block_counts` shrink the network for tests and
the CPU demo; the paper's models use the defaults.
"""

from typing import Any, Dict, Optional, Sequence

import tensorflow as tf
import tf_keras

from rethink_tf.layers.conv_norm import ConvNorm
from rethink_tf.modeling.backbone import registry

BLOCK_COUNTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class Bottleneck(tf_keras.layers.Layer):
  """1x1 -> 3x3 (stride, groups) -> 1x1, plus identity or projection shortcut, then ReLU.

  `stride_in_1x1` moves the stride to the first 1x1 conv: the original ResNet v1 layout of
  MSRA's Caffe weights (Detectron's R-50.pkl) and Keras Applications.

  Input [B, H, W, Cin] -> [B, H/stride, W/stride, out_channels].
  """

  def __init__(self,
               in_channels: int,
               bottleneck_channels: int,
               out_channels: int,
               strides: int = 1,
               groups: int = 1,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               stride_in_1x1: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self._cfg = dict(in_channels=in_channels,
                     bottleneck_channels=bottleneck_channels,
                     out_channels=out_channels,
                     strides=strides,
                     groups=groups,
                     norm=norm,
                     gn_num_groups=gn_num_groups,
                     stride_in_1x1=stride_in_1x1)
    kw: Dict[str, Any] = dict(norm=norm, gn_num_groups=gn_num_groups)
    s1, s3 = (strides, 1) if stride_in_1x1 else (1, strides)
    self.conv1 = ConvNorm(bottleneck_channels, 1, strides=s1, **kw, name="conv1")
    self.conv2 = ConvNorm(bottleneck_channels, 3, strides=s3, groups=groups, **kw, name="conv2")
    self.conv3 = ConvNorm(out_channels, 1, activation=None, **kw, name="conv3")
    self.shortcut = None
    if in_channels != out_channels or strides != 1:
      self.shortcut = ConvNorm(out_channels,
                               1,
                               strides=strides,
                               activation=None,
                               **kw,
                               name="shortcut")

  def call(self, x, training=None):
    y = self.conv3(self.conv2(self.conv1(x, training=training), training=training),
                   training=training)
    s = self.shortcut(x, training=training) if self.shortcut is not None else x
    return tf.nn.relu(y + s)

  def get_config(self):
    return {**super().get_config(), **self._cfg}


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class ResNet(tf_keras.Model):
  """ResNet-{50,101,152} / ResNeXt (groups x width_per_group) backbone.

  Input: [B, H, W, 3] float, H and W multiples of 32. Output: dict {1: stem after max-pool
  [B, H/4, W/4, stem], 2: C2 [B, H/4, W/4, 256m], 3: C3 (/8, 512m), 4: C4 (/16, 1024m),
  5: C5 (/32, 2048m)} where m = width_multiplier.

  freeze_at: 0 trains everything (scratch); k >= 1 freezes the stem and res2..res{k} (the
  ImageNet fine-tuning convention, Detectron FREEZE_AT=2).
  """

  def __init__(self,
               depth: int = 50,
               groups: int = 1,
               width_per_group: int = 64,
               norm: Optional[str] = "GN",
               freeze_at: int = 0,
               width_multiplier: float = 1.0,
               block_counts: Optional[Sequence[int]] = None,
               gn_num_groups: int = 32,
               stride_in_1x1: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self._cfg = dict(depth=depth,
                     groups=groups,
                     width_per_group=width_per_group,
                     norm=norm,
                     freeze_at=freeze_at,
                     width_multiplier=width_multiplier,
                     block_counts=list(block_counts) if block_counts else None,
                     gn_num_groups=gn_num_groups,
                     stride_in_1x1=stride_in_1x1)
    self.stride_in_1x1 = stride_in_1x1
    if block_counts is None:
      if depth not in BLOCK_COUNTS:
        raise ValueError(f"ResNet depth {depth} is not one of {sorted(BLOCK_COUNTS)}; "
                         "bind `block_counts` for a custom depth.")
      block_counts = BLOCK_COUNTS[depth]
    m = width_multiplier
    kw: Dict[str, Any] = dict(norm=norm, gn_num_groups=gn_num_groups)
    stem_channels = int(64 * m)
    self.stem = ConvNorm(stem_channels, 7, strides=2, **kw, name="stem")
    self.stem_pool = tf_keras.layers.MaxPool2D(3, 2, padding="valid", name="stem_pool")
    self.stem_pad = tf_keras.layers.ZeroPadding2D(1)  # after ReLU, so 0-padding == -inf padding
    self.stages = []
    in_ch = stem_channels
    bottleneck = int(groups * width_per_group * m)
    out_ch = int(256 * m)
    for stage, count in enumerate(block_counts):
      blocks = []
      for i in range(count):
        blocks.append(
            Bottleneck(in_ch,
                       bottleneck,
                       out_ch,
                       strides=2 if (i == 0 and stage > 0) else 1,
                       groups=groups,
                       stride_in_1x1=stride_in_1x1,
                       **kw,
                       name=f"res{stage + 2}_{i}"))
        in_ch = out_ch
      self.stages.append(blocks)
      bottleneck *= 2
      out_ch *= 2
    self.out_channels = {2: int(256 * m), 3: int(512 * m), 4: int(1024 * m), 5: int(2048 * m)}
    self.freeze_at = freeze_at
    self.norm = norm
    if freeze_at >= 1:
      self.stem.trainable = False
    for stage, blocks in enumerate(self.stages):
      if freeze_at >= stage + 2:
        for b in blocks:
          b.trainable = False

  def weight_convention(self):
    """Pretrained weights must have their stride where this model has it."""
    return {"stride_in_1x1": bool(self.stride_in_1x1)}

  def call(self, images, training=None) -> Dict[int, tf.Tensor]:
    x = self.stem(images, training=training)
    x = self.stem_pool(self.stem_pad(x))
    if self.freeze_at >= 1:
      x = tf.stop_gradient(x)
    feats = {1: x}
    for stage, blocks in enumerate(self.stages):
      for b in blocks:
        x = b(x, training=training)
      if self.freeze_at >= stage + 2:
        x = tf.stop_gradient(x)
      feats[stage + 2] = x
    return feats

  def get_config(self):
    return dict(self._cfg)


@registry.register("resnet")
def build_resnet(s: registry.BackboneSettings) -> ResNet:
  return ResNet(depth=s.depth,
                groups=s.groups,
                width_per_group=s.width_per_group,
                norm=s.norm,
                freeze_at=s.freeze_at,
                width_multiplier=s.width_multiplier,
                block_counts=s.block_counts,
                stride_in_1x1=s.stride_in_1x1,
                gn_num_groups=s.gn_num_groups,
                name="backbone")
