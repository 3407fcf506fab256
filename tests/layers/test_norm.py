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
                             roi_ref["gn_output_default_affine"], atol=1e-5, rtol=0)
  gn.gamma.assign(roi_ref["gn_weight"])
  gn.beta.assign(roi_ref["gn_bias"])
  np.testing.assert_allclose(gn(x).numpy().transpose(0, 3, 1, 2), roi_ref["gn_output"],
                             atol=1e-5, rtol=0)


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
  np.testing.assert_allclose(tape.gradient(l1, x).numpy(), tape.gradient(l2, x).numpy(),
                             atol=1e-4)


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
