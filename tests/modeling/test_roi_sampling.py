"""RoI sampling noise: per-image, layout-independent, uniform, and the same under XLA."""

import numpy as np
import tensorflow as tf

from rethink_tf.modeling.roi_heads.sampling import _per_image_uniform


def test_noise_depends_on_the_image_seed_only():
  seeds = tf.constant([[7, 123], [-5, 2**40], [7, 124]], tf.int64)
  like = tf.zeros([3, 20000])
  noise = _per_image_uniform(seeds, like).numpy()
  alone = _per_image_uniform(seeds[2:], like[2:]).numpy()
  np.testing.assert_array_equal(noise[2], alone[0])  # position in the batch
  assert not np.array_equal(noise[0], noise[2])  # neighbouring seeds differ
  assert noise.min() >= 0.0 and noise.max() < 1.0
  for row in noise:
    assert abs(row.mean() - 0.5) < 0.01 and abs(row.std() - 12**-0.5) < 0.01
    assert np.corrcoef(row[:-1], row[1:])[0, 1] < 0.02  # no serial correlation
  compiled = tf.function(_per_image_uniform, jit_compile=True)(seeds, like).numpy()
  np.testing.assert_array_equal(compiled, noise)
