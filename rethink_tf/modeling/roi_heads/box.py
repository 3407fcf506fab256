"""The box branch of the RoI heads: box head (4conv1fc with norm, or 2fc), box predictor and the
Fast R-CNN losses."""

from typing import Optional

import tensorflow as tf
import tf_keras

from rethink_tf.layers.conv_norm import ConvNorm, c2_xavier_fill
from rethink_tf.modeling.losses import Reducer, merge_rois, normalizer, smooth_l1

ROI_SMOOTH_L1_BETA = 1.0  # Detectron Fast R-CNN


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
    x = merge_rois(rois)
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
  `class_agnostic`: one box per RoI, deltas [B, N, 1, 4].
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


def fast_rcnn_losses(class_logits,
                     box_deltas,
                     roi_classes,
                     roi_box_targets,
                     roi_weights,
                     global_sum: Reducer = None):
  """Softmax CE over sampled RoIs; class-specific smooth-L1 on foreground, / sampled RoIs.

  Args: class_logits [B, S, K]; box_deltas [B, S, K, 4] (or [B, S, 1, 4], class-agnostic);
    roi_classes [B, S];
    roi_box_targets [B, S, 4]; roi_weights [B, S].
  """
  norm = normalizer(tf.reduce_sum(roi_weights), global_sum)
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=roi_classes,
                                                      logits=tf.cast(class_logits, tf.float32))
  cls_loss = tf.reduce_sum(ce * roi_weights) / norm
  if box_deltas.shape[2] == 1:  # class-agnostic
    deltas = tf.cast(box_deltas[:, :, 0], tf.float32)
  else:
    deltas = tf.gather(tf.cast(box_deltas, tf.float32), roi_classes, axis=2, batch_dims=2)
  fg = tf.cast(roi_classes > 0, tf.float32) * roi_weights
  box = tf.reduce_sum(smooth_l1(deltas - roi_box_targets, ROI_SMOOTH_L1_BETA), -1)
  box_loss = tf.reduce_sum(box * fg) / norm
  return cls_loss, box_loss
