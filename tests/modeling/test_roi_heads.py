"""RoI heads (detectron2's tests/modeling/test_roi_heads.py as the example): output shapes and
dtypes, each RoI computed on its own, the layers against numpy, Detectron's initializers, and
config round trips."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from rethink_tf.modeling.roi_heads.box import BoxHead, BoxPredictor
from rethink_tf.modeling.roi_heads.keypoint import KeypointHead
from rethink_tf.modeling.roi_heads.mask import MaskHead

RNG = np.random.default_rng(0)


def _rois(b=2, n=3, size=7, c=16):
  return tf.constant(RNG.normal(size=(b, n, size, size, c)), tf.float32)


def _permutation_equivariant(layer, x, **kwargs):
  """Permuting the RoIs of each image permutes the outputs: no RoI sees another one."""
  perm = [2, 0, 1]
  out = layer(x, **kwargs)
  out = out if isinstance(out, tuple) else (out,)
  permuted = layer(tf.gather(x, perm, axis=1), **kwargs)
  permuted = permuted if isinstance(permuted, tuple) else (permuted,)
  for a, b in zip(out, permuted):
    np.testing.assert_allclose(tf.gather(a, perm, axis=1).numpy(), b.numpy(), atol=1e-5)


def test_box_head_4conv1fc_shapes_variables_and_roi_independence():
  head = BoxHead("4conv1fc", conv_dim=8, fc_dim=32, norm="GN", gn_num_groups=4, num_conv=4)
  x = _rois()
  y = head(x, training=False)
  assert y.shape == (2, 3, 32) and y.dtype == tf.float32
  assert float(tf.reduce_min(y)) >= 0.0  # fc + ReLU
  shapes = {v.name.split("/", 1)[1]: tuple(v.shape) for v in head.variables}
  assert shapes["conv1/conv/kernel:0"] == (3, 3, 16, 8)
  assert shapes["conv2/conv/kernel:0"] == (3, 3, 8, 8)
  assert shapes["fc1/kernel:0"] == (7 * 7 * 8, 32)
  # A norm follows every conv: no conv bias (detectron2's `use_bias = norm == ""`).
  assert not any("conv/bias" in name for name in shapes)
  assert sum("gamma" in name for name in shapes) == 4
  _permutation_equivariant(head, x, training=False)


def test_box_head_2fc_equals_numpy():
  head = BoxHead("2fc", fc_dim=24, norm=None)
  x = _rois(b=1, n=4, c=5)
  y = head(x).numpy()
  w1, b1, w2, b2 = [v.numpy() for v in head.variables]
  flat = x.numpy().reshape(4, 7 * 7 * 5)  # row-major y, x, channel: Detectron's fc6 input
  want = np.maximum(np.maximum(flat @ w1 + b1, 0) @ w2 + b2, 0)
  np.testing.assert_allclose(y[0], want, rtol=1e-5, atol=1e-5)
  assert w1.shape == (245, 24) and w2.shape == (24, 24)


def test_box_head_type_is_checked():
  with pytest.raises(ValueError, match="'4conv1fc' or '2fc'"):
    BoxHead("3fc")


def test_box_predictor_layout_initializers_and_float32_outputs():
  predictor = BoxPredictor(num_classes=5)
  x = tf.constant(RNG.normal(size=(2, 300, 64)), tf.float32)
  logits, deltas = predictor(x)
  assert logits.shape == (2, 300, 5) and deltas.shape == (2, 300, 5, 4)
  w_cls = predictor.cls_score.kernel.numpy()
  w_box = predictor.bbox_pred.kernel.numpy()
  # Detectron's initialization: N(0, 0.01) for scores, N(0, 0.001) for boxes, zero biases.
  assert w_cls.std() == pytest.approx(0.01, rel=0.15)
  assert w_box.std() == pytest.approx(0.001, rel=0.15)
  assert not predictor.cls_score.bias.numpy().any() and not predictor.bbox_pred.bias.numpy().any()
  # deltas[..., k, :] are outputs 4k..4k+3 (Detectron's 4K layout).
  flat = x.numpy() @ w_box + predictor.bbox_pred.bias.numpy()
  np.testing.assert_allclose(deltas.numpy()[0, 7, 3], flat[0, 7, 12:16], rtol=1e-5, atol=1e-6)
  agnostic = BoxPredictor(num_classes=5, class_agnostic=True)
  assert agnostic(x)[1].shape == (2, 300, 1, 4)
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    mixed = BoxPredictor(num_classes=5)
    out = mixed(tf.cast(x, tf.bfloat16))
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)
  assert out[0].dtype == tf.float32 and out[1].dtype == tf.float32


def test_mask_head_shapes_upsampling_and_roi_independence():
  head = MaskHead(num_classes=4, conv_dim=8, num_conv=2, norm="GN", gn_num_groups=4)
  x = _rois(size=14)
  y = head(x, training=False)
  assert y.shape == (2, 3, 28, 28, 4) and y.dtype == tf.float32
  shapes = {v.name.split("/", 1)[1]: tuple(v.shape) for v in head.variables}
  assert shapes["deconv/kernel:0"] == (2, 2, 8, 8)  # 2x2 stride-2 deconv: 14 -> 28
  assert shapes["mask_predictor/kernel:0"] == (1, 1, 8, 4)
  _permutation_equivariant(head, x, training=False)


def test_mask_head_without_convs_is_deconv_relu_then_1x1():
  head = MaskHead(num_classes=2, conv_dim=3, num_conv=0, norm=None)
  x = _rois(b=1, n=1, size=2, c=3)
  y = head(x).numpy()[0, 0]
  k, b = head.deconv.kernel.numpy(), head.deconv.bias.numpy()  # [2, 2, out, in]
  up = np.zeros((4, 4, 3))
  for i in range(2):
    for j in range(2):
      # Each input pixel writes one 2x2 output block (stride = kernel size: no overlap).
      up[2 * i:2 * i + 2, 2 * j:2 * j + 2] = np.einsum("aboc,c->abo", k, x.numpy()[0, 0, i, j])
  up = np.maximum(up + b, 0)
  want = up @ head.predictor.kernel.numpy()[0, 0] + head.predictor.bias.numpy()
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_keypoint_head_shapes_and_heatmap_layout():
  head = KeypointHead(num_keypoints=5, conv_dim=8, num_conv=2, norm="GN", gn_num_groups=4)
  x = _rois(size=14)
  y = head(x, training=False)
  # 14 -> 28 (stride-2 deconv) -> 56 (2x bilinear); keypoints before the spatial axes.
  assert y.shape == (2, 3, 5, 56, 56) and y.dtype == tf.float32
  _permutation_equivariant(head, x, training=False)
  # The heatmap of keypoint k is channel k of the upsampled deconv output.
  feats = tf.reshape(x, [6, 14, 14, 16])
  for conv in head.convs:
    feats = conv(feats, training=False)
  low = head.score_lowres(feats)
  up = tf.image.resize(low, [56, 56], method="bilinear").numpy().reshape(2, 3, 56, 56, 5)
  np.testing.assert_allclose(y.numpy()[1, 2, 4], up[1, 2, ..., 4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [
    BoxHead("2fc", fc_dim=16, norm=None, name="box_head"),
    BoxHead("4conv1fc", conv_dim=8, fc_dim=16, norm="SyncBN", num_conv=2),
    BoxPredictor(num_classes=3, class_agnostic=True),
    MaskHead(num_classes=3, conv_dim=8, num_conv=1, norm="GN", gn_num_groups=2),
    KeypointHead(num_keypoints=2, conv_dim=8, num_conv=1, norm=None),
])
def test_config_round_trip(layer):
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
