"""get_norm and GroupNorm against torch.nn.GroupNorm(32, 64) reference values."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from rethink_tf.layers.norm import FrozenBatchNorm, GroupNorm, get_norm


def test_groupnorm_matches_torch(roi_ref):
  x = roi_ref["gn_input"].transpose(0, 2, 3, 1)
  gn = get_norm("GN", 64)
  assert isinstance(gn, tf_keras.layers.GroupNormalization)
  gn.build(x.shape)
  np.testing.assert_allclose(gn(x).numpy().transpose(0, 3, 1, 2),
                             roi_ref["gn_output_default_affine"],
                             atol=1e-5,
                             rtol=0)
  gn.gamma.assign(roi_ref["gn_weight"])
  gn.beta.assign(roi_ref["gn_bias"])
  np.testing.assert_allclose(gn(x).numpy().transpose(0, 3, 1, 2),
                             roi_ref["gn_output"],
                             atol=1e-5,
                             rtol=0)


def test_fast_groupnorm_equals_keras_layer(roi_ref):
  x = tf.constant(roi_ref["gn_input"].transpose(0, 2, 3, 1))
  ours = GroupNorm(groups=32, epsilon=1e-5)
  ref = tf_keras.layers.GroupNormalization(groups=32, epsilon=1e-5)
  ours.build(x.shape)
  ref.build(x.shape)
  for layer in (ours, ref):
    layer.gamma.assign(roi_ref["gn_weight"])
    layer.beta.assign(roi_ref["gn_bias"])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y1, y2 = ours(x), ref(x)
    l1, l2 = tf.reduce_sum(y1 * y1), tf.reduce_sum(y2 * y2)
  np.testing.assert_allclose(y1.numpy(), y2.numpy(), atol=1e-5)
  np.testing.assert_allclose(tape.gradient(l1, x).numpy(), tape.gradient(l2, x).numpy(), atol=1e-4)


def test_factory_types_and_settings():
  assert get_norm(None, 8) is None and get_norm("", 8) is None
  gn = get_norm("GN", 64)
  assert gn.groups == 32 and gn.epsilon == 1e-5
  sbn = get_norm("SyncBN", 8)
  assert isinstance(sbn, tf_keras.layers.BatchNormalization) and sbn.synchronized
  bn = get_norm("BN", 8)
  assert isinstance(bn, tf_keras.layers.BatchNormalization) and not bn.synchronized
  assert bn.epsilon == 1e-5 and bn.momentum == 0.9
  assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm)
  with pytest.raises(ValueError, match="Unknown norm"):
    get_norm("LayerNorm", 8)
  with pytest.raises(ValueError, match="not divisible"):
    get_norm("GN", 48, name="stem", num_groups=32)


def test_frozen_bn_is_a_fixed_affine_map_in_training():
  layer = FrozenBatchNorm()
  x = tf.random.normal([2, 4, 4, 3], 5.0, 2.0)
  layer.build(x.shape)
  layer.moving_mean.assign([1.0, 2.0, 3.0])
  layer.moving_variance.assign([4.0, 1.0, 0.25])
  layer.gamma.assign([2.0, 1.0, 1.0])
  y = layer(x, training=True)
  expected = (x - [1.0, 2.0, 3.0]) / np.sqrt(np.array([4.0, 1.0, 0.25]) + 1e-5) * [2.0, 1, 1]
  np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
  assert not layer.trainable_variables


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_batchnorm_equals_the_unfused_keras_layer(dtype):
  """Training output, gradients and moving statistics (biased variance) as Keras' unfused BN;
  inference with the moving statistics; the fused kernels are what runs."""
  x = tf.random.normal([2, 6, 5, 8], 1.0, 3.0, seed=4)
  ours = get_norm("BN", 8)
  assert type(ours).__name__ == "BatchNorm"
  ref = tf_keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, fused=False)
  for layer in (ours, ref):
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, 8))
    layer.beta.assign(np.linspace(-1.0, 1.0, 8))
  xin = tf.cast(x, dtype)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(xin)
    y1 = tf.cast(ours(xin, training=True), tf.float32)
    y2 = tf.cast(ref(tf.cast(xin, tf.float32), training=True), tf.float32)
    l1, l2 = tf.reduce_sum(y1 * y1 * 0.01), tf.reduce_sum(y2 * y2 * 0.01)
  tol = 1e-4 if dtype == "float32" else 5e-2
  np.testing.assert_allclose(y1.numpy(), y2.numpy(), atol=tol, rtol=tol)
  g1 = tape.gradient(l1, [xin] + ours.trainable_variables)
  g2 = tape.gradient(l2, [xin] + ref.trainable_variables)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(),
                               tf.cast(b, tf.float32).numpy(),
                               atol=tol,
                               rtol=tol)
  # Moving statistics: 0.9 * init + 0.1 * batch moments, the variance biased (n = 60).
  mean, var = tf.nn.moments(tf.cast(xin, tf.float32), [0, 1, 2])
  np.testing.assert_allclose(ours.moving_mean.numpy(), 0.1 * mean.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 + 0.1 * var.numpy(), rtol=1e-4)
  np.testing.assert_allclose(ours.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=1e-4)
  y_inf = tf.cast(ours(xin, training=False), tf.float32).numpy()
  expected = ((tf.cast(xin, tf.float32).numpy() - ours.moving_mean.numpy()) /
              np.sqrt(ours.moving_variance.numpy() + 1e-5) * ours.gamma.numpy() + ours.beta.numpy())
  np.testing.assert_allclose(y_inf, expected, atol=tol, rtol=tol)
  graph = tf.function(lambda t: ours(t, training=True)).get_concrete_function(xin).graph
  assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
