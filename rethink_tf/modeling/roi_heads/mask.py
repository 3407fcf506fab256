"""The mask branch of the RoI heads (Mask R-CNN): head, targets, loss and mask probabilities."""

from typing import Optional

import tensorflow as tf
import tf_keras

from rethink_tf.layers.conv_norm import ConvNorm, msra_fan_out
from rethink_tf.layers.roi_align import roi_align_flat
from rethink_tf.modeling.losses import Reducer, merge_rois, normalizer
from rethink_tf.modeling.roi_heads.standard import RoIBranch


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class MaskHead(RoIBranch):
  """4 x (3x3 conv + norm + ReLU), 2x2 stride-2 deconv + ReLU, 1x1 conv to K class masks.

  Input [B, N, 14, 14, C] -> mask logits [B, N, 28, 28, K] (K includes background, Detectron).
  As a branch of the RoI heads it pools with `pool_size` x `pool_size` bins of
  `sampling_ratio` samples, trains on the foreground RoIs with the GT-class mask's per-pixel
  BCE and adds `masks` [B, D, 28, 28] (probabilities relative to each box) to the detections.
  """

  kind = "mask"

  def __init__(self,
               num_classes: int,
               conv_dim: int = 256,
               num_conv: int = 4,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               pool_size: int = 14,
               sampling_ratio: int = 2,
               **kwargs):
    super().__init__(**kwargs)
    self._cfg = dict(num_classes=num_classes,
                     conv_dim=conv_dim,
                     num_conv=num_conv,
                     norm=norm,
                     gn_num_groups=gn_num_groups,
                     pool_size=pool_size,
                     sampling_ratio=sampling_ratio)
    self.pooler = (pool_size, sampling_ratio)
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
    x = merge_rois(rois)
    for conv in self.convs:
      x = conv(x, training=training)
    x = self.predictor(self.deconv(x))
    return tf.reshape(x, [b, n, x.shape[1], x.shape[2], x.shape[3]])

  def get_config(self):
    return {**super().get_config(), **self._cfg}

  def train_outputs(self, pool, feats, rois, sampled, batch):
    """mask_logits [B, R, M, M] of each RoI's class, mask_targets [B, R, M, M] cropped from
    its GT mask, mask_weights [B, R] (1 for foreground RoIs)."""
    logits = select_class(self(pool(feats, rois, self.kind), training=True), sampled["classes"])
    targets = mask_targets(rois, sampled["gt_index"], batch["gt_boxes"], batch["gt_masks"],
                           logits.shape[2])
    return dict(mask_logits=logits,
                mask_targets=targets,
                mask_weights=tf.cast(sampled["is_fg"], tf.float32))

  def loss_names(self):
    return ["mask_loss"]

  def losses(self, outputs, global_sum):
    return dict(mask_loss=mask_loss(outputs["mask_logits"], outputs["mask_targets"],
                                    outputs["mask_weights"], global_sum))

  def predict(self, pool, feats, det, plus_one):
    """masks [B, D, 28, 28]: probabilities relative to det's boxes, of det's classes."""
    # Detectron pools masks on its inclusive boxes: back from the continuous ones.
    boxes = det["boxes"] - plus_one
    logits = select_class(self(pool(feats, boxes, self.kind, training=False), training=False),
                          det["classes"])
    return dict(masks=tf.sigmoid(tf.cast(logits, tf.float32)))


def select_class(mask_logits, classes):
  """[B, R, h, w, K] logits, [B, R] class -> [B, R, h, w] logits of that class."""
  logits = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
  return tf.gather(logits, classes, axis=2, batch_dims=2)


def mask_loss(mask_logits, mask_targets, mask_weights, global_sum: Reducer = None):
  """Per-pixel BCE on the GT-class mask, mean over foreground RoIs and pixels.

  Args: mask_logits [B, R, M, M]; mask_targets [B, R, M, M]; mask_weights [B, R].
  """
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets,
                                                logits=tf.cast(mask_logits, tf.float32))
  per_roi = tf.reduce_mean(bce, axis=[2, 3])
  return tf.reduce_sum(per_roi * mask_weights) / normalizer(tf.reduce_sum(mask_weights), global_sum)


def mask_targets(rois, gt_index, gt_boxes, gt_masks, output_size: int = 28):
  """Crops box-relative GT masks to the RoIs.

  Args:
    rois: [B, R, 4] foreground RoIs; gt_index: [B, R] matched GT index.
    gt_boxes: [B, M, 4]; gt_masks: [B, M, S, S] float GT masks relative to their own box.
  Returns:
    [B, R, output_size, output_size] float {0, 1} targets.
  """
  b, r = tf.shape(rois)[0], tf.shape(rois)[1]
  size = gt_masks.shape[2]
  g = tf.gather(gt_boxes, gt_index, batch_dims=1)
  gh = tf.maximum(g[..., 2] - g[..., 0], 1e-6) / size
  gw = tf.maximum(g[..., 3] - g[..., 1], 1e-6) / size
  # The RoI in the GT mask's own pixel grid; RoIAlign (not crop_and_resize, which XLA lacks
  # and which samples at corners) resamples it with pixel-centre alignment.
  rel = tf.stack([(rois[..., 0] - g[..., 0]) / gh, (rois[..., 1] - g[..., 1]) / gw,
                  (rois[..., 2] - g[..., 0]) / gh, (rois[..., 3] - g[..., 1]) / gw],
                 axis=-1)
  flat = tf.reshape(tf.cast(gt_masks, tf.float32), [b, -1, 1])
  full = lambda v: tf.fill([b, r], v)
  crops = roi_align_flat(flat,
                         gt_index * size * size,
                         full(size),
                         full(size),
                         full(1.0),
                         rel,
                         output_size,
                         sampling_ratio=2,
                         aligned=True)
  return tf.stop_gradient(tf.cast(crops[..., 0] >= 0.5, tf.float32))
