"""Evaluation reuses one traced detector per model (no retrace per evaluation)."""

import gc
import weakref

import tensorflow as tf
import tf_keras

from rethink_tf.evaluation import evaluator


class _Doubler(tf_keras.Model):

  def detect(self, images, image_size):
    return {"x": images * 2.0 + tf.reduce_sum(image_size)}


def test_detect_function_is_traced_once_per_model_and_freed_with_it():
  model = _Doubler()
  fn = evaluator.detect_function(model)
  images, sizes = tf.ones([2, 4, 4, 3]), tf.ones([2, 2])
  for _ in range(3):  # three "evaluations"
    assert evaluator.detect_function(model) is fn
    assert float(evaluator.detect_function(model)(images, sizes)["x"][0, 0, 0, 0]) == 6.0
  assert fn.experimental_get_tracing_count() == 1
  assert "_detect_function" not in model._trackable_children()  # not in checkpoints
  other = _Doubler()
  assert evaluator.detect_function(other) is not fn
  ref = weakref.ref(model)
  del model, fn
  gc.collect()
  assert ref() is None
