"""Train steps: multi-replica SyncBN with global statistics (the whole model's SyncBN step is in
test_replica_equivalence.py; the XLA-compiled loop in test_precision_and_xla.py)."""

import numpy as np
import tensorflow as tf
import tf_keras

from rethink_tf.layers.norm import get_norm


def _one_bn_step(strategy, norm, data):
  """One training forward of conv->norm; returns (outputs, moving mean, moving variance)."""
  with strategy.scope():
    conv = tf_keras.layers.Conv2D(4, 1, use_bias=False, kernel_initializer="ones")
    bn = get_norm(norm, 4)
    model = tf_keras.Sequential([tf_keras.Input([2, 2, 3]), conv, bn])

  def step(x):
    return model(x, training=True)

  n = strategy.num_replicas_in_sync
  per = data.shape[0] // n
  dist = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(data[
      ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per]))
  out = strategy.run(tf.function(step), args=(dist,))
  out = np.concatenate([o.numpy() for o in strategy.experimental_local_results(out)])
  return out, bn.moving_mean.numpy(), bn.moving_variance.numpy()


def test_syncbn_uses_global_batch_statistics(mirrored_strategy):
  """2 replicas x 2 images with SyncBN normalize with the statistics of all 4 images."""
  rng = np.random.default_rng(0)
  data = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
  data[2:] += 5.0  # the two replicas see very different statistics
  sync_out, sync_mean, sync_var = _one_bn_step(mirrored_strategy, "SyncBN", data)
  x = data.sum(-1, keepdims=True).repeat(4, -1)  # the all-ones 1x1 conv
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))  # global-batch statistics
  np.testing.assert_allclose(sync_out, (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
  np.testing.assert_allclose(sync_mean, 0.1 * mean, rtol=1e-5)  # momentum 0.9 from 0
  np.testing.assert_allclose(sync_var, 0.9 + 0.1 * var, rtol=1e-5)
  # Per-replica BN on the same split normalizes each half with its own statistics.
  local_out, _, _ = _one_bn_step(mirrored_strategy, "BN", data)
  assert np.abs(local_out - sync_out).max() > 0.1
