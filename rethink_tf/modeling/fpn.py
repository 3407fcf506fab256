"""Feature Pyramid Network P2-P6 (Lin et al. 2017; Detectron/detectron2 layout)."""

from typing import Any, Dict, Optional

import tensorflow as tf
import tf_keras

from rethink_tf.layers.conv_norm import ConvNorm


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class FPN(tf_keras.layers.Layer):
  """Lateral 1x1 + output 3x3 per level, nearest top-down upsampling, P6 by stride-2 subsample.

  Input: dict {2..5: C_l [B, H/2^l, W/2^l, *]}. Output: dict {2..6: P_l [B, H/2^l, W/2^l,
  out_channels]}. `norm` applies to laterals and outputs (the paper's GN models use it).
  """

  def __init__(self,
               out_channels: int = 256,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               min_level: int = 2,
               max_level: int = 6,
               **kwargs):
    super().__init__(**kwargs)
    self._cfg = dict(out_channels=out_channels,
                     norm=norm,
                     gn_num_groups=gn_num_groups,
                     min_level=min_level,
                     max_level=max_level)
    self.min_level, self.max_level = min_level, max_level
    self.backbone_levels = list(range(min_level, min(max_level, 5) + 1))
    kw: Dict[str, Any] = dict(norm=norm,
                              gn_num_groups=gn_num_groups,
                              activation=None,
                              kernel_init="xavier")
    # Lists, indexed like backbone_levels: checkpoints cannot hold int-keyed dicts of layers.
    self.lateral = [
        ConvNorm(out_channels, 1, **kw, name=f"lateral_p{l}") for l in self.backbone_levels
    ]
    self.output_convs = [
        ConvNorm(out_channels, 3, **kw, name=f"output_p{l}") for l in self.backbone_levels
    ]

  def call(self, feats: Dict[int, tf.Tensor], training=None) -> Dict[int, tf.Tensor]:
    out = {}
    top = None
    for i in reversed(range(len(self.backbone_levels))):
      l = self.backbone_levels[i]
      lat = self.lateral[i](feats[l], training=training)
      if top is not None:
        lat += tf.repeat(tf.repeat(top, 2, axis=1), 2, axis=2)
      top = lat
      out[l] = self.output_convs[i](lat, training=training)
    for l in range(6, self.max_level + 1):
      out[l] = out[l - 1][:, ::2, ::2, :]
    return out

  def get_config(self):
    return {**super().get_config(), **self._cfg}
