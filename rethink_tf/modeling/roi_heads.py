"""RoI heads: box head (4conv1fc with norm, or 2fc), box predictor, mask head (4conv + deconv),
keypoint head (8conv + deconv + upsampling)."""

from typing import Optional

import tensorflow as tf
import tf_keras

from rethink_tf.layers.conv_norm import ConvNorm, c2_xavier_fill, msra_fan_out


def _merge_rois(x):
  """[B, N, h, w, C] -> [B*N, h, w, C]."""
  s = tf.shape(x)
  return tf.reshape(x, tf.concat([[s[0] * s[1]], s[2:]], 0))


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class BoxHead(tf_keras.layers.Layer):
  """Box head. "4conv1fc": 4 x (3x3 conv + norm + ReLU) then fc + ReLU (Detectron GN head);
  "2fc": two fc + ReLU (no norm). Input [B, N, 7, 7, C] -> [B, N, fc_dim].
  """

  def __init__(self,
               head_type: str = "4conv1fc",
               conv_dim: int = 256,
               fc_dim: int = 1024,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               num_conv: int = 4,
               **kwargs):
    super().__init__(**kwargs)
    if head_type not in ("4conv1fc", "2fc"):
      raise ValueError(f"box head_type {head_type!r} must be '4conv1fc' or '2fc'")
    self._cfg = dict(head_type=head_type,
                     conv_dim=conv_dim,
                     fc_dim=fc_dim,
                     norm=norm,
                     gn_num_groups=gn_num_groups,
                     num_conv=num_conv)
    self.convs = []
    if head_type == "4conv1fc":
      self.convs = [
          ConvNorm(conv_dim, 3, norm=norm, gn_num_groups=gn_num_groups, name=f"conv{i + 1}")
          for i in range(num_conv)
      ]
    num_fc = 1 if head_type == "4conv1fc" else 2
    self.fcs = [
        tf_keras.layers.Dense(fc_dim,
                              activation="relu",
                              kernel_initializer=c2_xavier_fill(),
                              name=f"fc{i + 1}") for i in range(num_fc)
    ]

  def call(self, rois, training=None):
    b, n = tf.shape(rois)[0], tf.shape(rois)[1]
    x = _merge_rois(rois)
    for conv in self.convs:
      x = conv(x, training=training)
    x = tf.reshape(x, [b * n, x.shape[1] * x.shape[2] * x.shape[3]])
    for fc in self.fcs:
      x = fc(x)
    return tf.reshape(x, [b, n, x.shape[-1]])

  def get_config(self):
    return {**super().get_config(), **self._cfg}


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class BoxPredictor(tf_keras.layers.Layer):
  """Classification over K = num_classes (+ background at index 0) and class-specific boxes.

  Input [B, N, D] -> (logits [B, N, K], deltas [B, N, K, 4]); Detectron's layout (4K outputs).
  `class_agnostic`: one box per RoI, deltas [B, N, 1, 4] (Cascade R-CNN).
  """

  def __init__(self, num_classes: int, class_agnostic: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.class_agnostic = class_agnostic
    self._num_boxes = 1 if class_agnostic else num_classes
    # Final logits and deltas in float32 under mixed precision (dtype pins the layer policy).
    self.cls_score = tf_keras.layers.Dense(
        num_classes,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
        dtype="float32",
        name="cls_score")
    self.bbox_pred = tf_keras.layers.Dense(
        4 * self._num_boxes,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.001),
        dtype="float32",
        name="bbox_pred")

  def call(self, x):
    b, n = tf.shape(x)[0], tf.shape(x)[1]
    return self.cls_score(x), tf.reshape(self.bbox_pred(x), [b, n, self._num_boxes, 4])

  def get_config(self):
    return {
        **super().get_config(), "num_classes": self.num_classes,
        "class_agnostic": self.class_agnostic
    }


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class MaskHead(tf_keras.layers.Layer):
  """4 x (3x3 conv + norm + ReLU), 2x2 stride-2 deconv + ReLU, 1x1 conv to K class masks.

  Input [B, N, 14, 14, C] -> mask logits [B, N, 28, 28, K] (K includes background, Detectron).
  """

  def __init__(self,
               num_classes: int,
               conv_dim: int = 256,
               num_conv: int = 4,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               **kwargs):
    super().__init__(**kwargs)
    self._cfg = dict(num_classes=num_classes,
                     conv_dim=conv_dim,
                     num_conv=num_conv,
                     norm=norm,
                     gn_num_groups=gn_num_groups)
    self.convs = [
        ConvNorm(conv_dim, 3, norm=norm, gn_num_groups=gn_num_groups, name=f"conv{i + 1}")
        for i in range(num_conv)
    ]
    self.deconv = tf_keras.layers.Conv2DTranspose(conv_dim,
                                                  2,
                                                  strides=2,
                                                  activation="relu",
                                                  kernel_initializer=msra_fan_out(),
                                                  name="deconv")
    self.predictor = tf_keras.layers.Conv2D(
        num_classes,
        1,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.001),
        dtype="float32",
        name="mask_predictor")  # float32 logits under mixed precision

  def call(self, rois, training=None):
    b, n = tf.shape(rois)[0], tf.shape(rois)[1]
    x = _merge_rois(rois)
    for conv in self.convs:
      x = conv(x, training=training)
    x = self.predictor(self.deconv(x))
    return tf.reshape(x, [b, n, x.shape[1], x.shape[2], x.shape[3]])

  def get_config(self):
    return {**super().get_config(), **self._cfg}


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class KeypointHead(tf_keras.layers.Layer):
  """Keypoint R-CNN head: 8 x (3x3 conv 512 + norm + ReLU), a 4x4 stride-2 deconv to K
  heatmaps, then 2x bilinear upsampling (Detectron's keypoint head, GN in the paper's version).

  Input [B, N, 14, 14, C] -> heatmap logits [B, N, K, 56, 56] float32.
  """

  def __init__(self,
               num_keypoints: int,
               conv_dim: int = 512,
               num_conv: int = 8,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               **kwargs):
    super().__init__(**kwargs)
    self.num_keypoints = num_keypoints
    self._cfg = dict(num_keypoints=num_keypoints,
                     conv_dim=conv_dim,
                     num_conv=num_conv,
                     norm=norm,
                     gn_num_groups=gn_num_groups)
    self.convs = [
        ConvNorm(conv_dim, 3, norm=norm, gn_num_groups=gn_num_groups, name=f"conv{i + 1}")
        for i in range(num_conv)
    ]
    self.score_lowres = tf_keras.layers.Conv2DTranspose(
        num_keypoints,
        4,
        strides=2,
        padding="same",
        kernel_initializer=msra_fan_out(),
        dtype="float32",
        name="score_lowres")  # float32 logits under mixed precision

  def call(self, rois, training=None):
    b, n = tf.shape(rois)[0], tf.shape(rois)[1]
    x = _merge_rois(rois)
    for conv in self.convs:
      x = conv(x, training=training)
    x = self.score_lowres(x)
    x = tf.image.resize(x, [2 * x.shape[1], 2 * x.shape[2]], method="bilinear")
    x = tf.reshape(x, [b, n, x.shape[1], x.shape[2], x.shape[3]])
    return tf.transpose(x, [0, 1, 4, 2, 3])

  def get_config(self):
    return {**super().get_config(), **self._cfg}
