"""The keypoint branch of the RoI heads (Keypoint R-CNN): head, heatmap targets, loss and
heatmap decoding (Mask R-CNN, He et al. 2017, Sec. 5; Detectron's keypoint head).

A keypoint is (x, y, v) in image pixels, v = 0 unlabeled, 1 labeled but hidden, 2 visible
(COCO). Every tensor here has a static shape: R RoIs (padded), K keypoints, S x S heatmaps.

Targets discretize a labeled keypoint inside its RoI [x1, x2) x [y1, y2) to one of S x S bins
(a keypoint exactly on the far edge goes to the last bin), as Detectron does; the loss is a
softmax over the S * S positions of each keypoint. Decoding takes each heatmap's argmax and
returns the centre of that bin in image pixels: a one-hot heatmap at a keypoint's bin decodes
to within half a bin of the keypoint, and exactly to a keypoint at a bin centre. (Detectron
first resizes each RoI's heatmaps to the RoI's own pixel size, a shape that depends on the
data; the bin centre keeps the graph static, at half a bin of resolution: under 1 px for RoIs
up to 56 px at S = 56.)
"""

from typing import Optional, Tuple

import tensorflow as tf
import tf_keras

from rethink_tf.errors import ConfigError
from rethink_tf.layers.conv_norm import ConvNorm, msra_fan_out
from rethink_tf.modeling.losses import merge_rois, normalizer
from rethink_tf.modeling.roi_heads.standard import RoIBranch


def keypoint_targets(keypoints: tf.Tensor, rois_yxyx: tf.Tensor,
                     heatmap_size: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Heatmap targets of the keypoints matched to each RoI.

  Args:
    keypoints: [..., R, K, 3] float (x, y, v) in image pixels.
    rois_yxyx: [..., R, 4] float RoIs in the same pixels.
    heatmap_size: S.
  Returns:
    (bin [..., R, K] int32: y_bin * S + x_bin, valid [..., R, K] float32: 1 where the keypoint
    is labeled (v > 0) and inside its RoI, else 0 (bin 0)).
  """
  x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
  y1, x1, y2, x2 = (rois_yxyx[..., i:i + 1] for i in range(4))
  s = float(heatmap_size)

  def to_bin(p, lo, hi):
    scaled = tf.floor((p - lo) * s / tf.maximum(hi - lo, 1e-6))
    scaled = tf.where(tf.equal(p, hi), s - 1.0, scaled)  # the far edge is in the last bin
    return scaled

  bx, by = to_bin(x, x1, x2), to_bin(y, y1, y2)
  inside = (bx >= 0) & (by >= 0) & (bx < s) & (by < s)
  valid = inside & (v > 0)
  index = tf.where(valid, tf.cast(by * s + bx, tf.int32), 0)
  return index, tf.cast(valid, tf.float32)


def keypoint_loss(logits: tf.Tensor,
                  target_bins: tf.Tensor,
                  valid: tf.Tensor,
                  normalizer=None) -> tf.Tensor:
  """Softmax cross-entropy over the S x S positions of each labeled keypoint.

  Args:
    logits: [N, K, S, S] float.
    target_bins, valid: [N, K] from `keypoint_targets`.
    normalizer: divides the summed loss; default the number of valid keypoints (at least 1).
  """
  n, k = tf.shape(logits)[0], tf.shape(logits)[1]
  flat = tf.reshape(tf.cast(logits, tf.float32), [n, k, -1])
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(target_bins, flat)
  total = tf.reduce_sum(ce * valid)
  if normalizer is None:
    normalizer = tf.maximum(tf.reduce_sum(valid), 1.0)
  return total / normalizer


def decode_heatmaps(logits: tf.Tensor, rois_yxyx: tf.Tensor) -> tf.Tensor:
  """Keypoints from heatmap logits: each heatmap's argmax bin, as the bin centre in pixels.

  Args:
    logits: [..., R, K, S, S] float.
    rois_yxyx: [..., R, 4] float RoIs in image pixels.
  Returns:
    [..., R, K, 3] float32 (x, y, score), score = the argmax logit (Detectron's keypoint score).
  """
  shape = tf.shape(logits)
  s = logits.shape[-1]
  flat = tf.reshape(tf.cast(logits, tf.float32), tf.concat([shape[:-2], [-1]], 0))
  best = tf.argmax(flat, axis=-1, output_type=tf.int32)
  score = tf.reduce_max(flat, axis=-1)
  bx = tf.cast(best % s, tf.float32)
  by = tf.cast(best // s, tf.float32)
  y1, x1, y2, x2 = (rois_yxyx[..., i:i + 1] for i in range(4))
  x = x1 + (bx + 0.5) * (x2 - x1) / s
  y = y1 + (by + 0.5) * (y2 - y1) / s
  return tf.stack([x, y, score], axis=-1)


@tf_keras.utils.register_keras_serializable(package="rethink_tf")
class KeypointHead(RoIBranch):
  """Keypoint R-CNN head: 8 x (3x3 conv 512 + norm + ReLU), a 4x4 stride-2 deconv to K
  heatmaps, then 2x bilinear upsampling (Detectron's keypoint head, GN in the paper's version).

  Input [B, N, 14, 14, C] -> heatmap logits [B, N, K, 56, 56] float32. As a branch of the RoI
  heads it trains on the foreground RoIs (the batch needs gt_keypoints [B, M, K, 3], x/y/v in
  resized pixels) and adds `keypoints` [B, D, K, 3] (x, y, score) to the detections.
  """

  kind = "keypoint"

  def __init__(self,
               num_keypoints: int,
               conv_dim: int = 512,
               num_conv: int = 8,
               norm: Optional[str] = "GN",
               gn_num_groups: int = 32,
               pool_size: int = 14,
               sampling_ratio: int = 2,
               **kwargs):
    super().__init__(**kwargs)
    self.num_keypoints = num_keypoints
    self._cfg = dict(num_keypoints=num_keypoints,
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
    x = merge_rois(rois)
    for conv in self.convs:
      x = conv(x, training=training)
    x = self.score_lowres(x)
    x = tf.image.resize(x, [2 * x.shape[1], 2 * x.shape[2]], method="bilinear")
    x = tf.reshape(x, [b, n, x.shape[1], x.shape[2], x.shape[3]])
    return tf.transpose(x, [0, 1, 4, 2, 3])

  def get_config(self):
    return {**super().get_config(), **self._cfg}

  def check_data(self, input_config):
    names = tuple(getattr(input_config, "keypoint_names", ()))
    if self.num_keypoints != len(names):
      raise ConfigError(
          f"build_model.num_keypoints = {self.num_keypoints} but InputConfig.keypoint_names "
          f"names {len(names)} keypoints: bind both (the head's outputs are the data's "
          "keypoints)")

  def train_outputs(self, pool, feats, rois, sampled, batch):
    """Heatmap logits [B, R, K, S, S] with their targets (bins [B, R, K], weights [B, R, K]:
    labeled keypoints inside foreground RoIs)."""
    logits = self(pool(feats, rois, self.kind), training=True)
    matched = tf.gather(batch["gt_keypoints"], sampled["gt_index"], batch_dims=1)
    bins, valid = keypoint_targets(matched, rois, logits.shape[-1])
    valid *= tf.cast(sampled["is_fg"], tf.float32)[..., None]
    return dict(keypoint_logits=logits, keypoint_targets=bins, keypoint_weights=valid)

  def loss_names(self):
    return ["keypoint_loss"]

  def losses(self, outputs, global_sum):
    """Normalized by the labeled keypoints of the global batch."""
    logits, weights = outputs["keypoint_logits"], outputs["keypoint_weights"]
    s = tf.shape(logits)
    return dict(keypoint_loss=keypoint_loss(
        merge_rois(logits), tf.reshape(outputs["keypoint_targets"], [s[0] * s[1], s[2]]),
        tf.reshape(weights, [s[0] * s[1], s[2]]), normalizer(tf.reduce_sum(weights), global_sum)))

  def predict(self, pool, feats, det, plus_one):
    """keypoints [B, D, K, 3] (x, y, score; resized-image pixels) of det's boxes."""
    logits = self(pool(feats, det["boxes"], self.kind, training=False), training=False)
    return dict(keypoints=decode_heatmaps(logits, det["boxes"]))
