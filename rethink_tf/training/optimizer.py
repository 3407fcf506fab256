"""SGD with momentum; weight decay as an explicit L2 term on conv/fc kernels only.

Detectron applies weight decay as `grad += wd * w`; the L2 term 0.5 * wd * |w|^2 has exactly
that gradient. Norm parameters (GN/BN gamma, beta) and biases get no decay (detectron2,
MMDetection), which matters for GN trained from scratch.
"""

import gin
import tensorflow as tf
import tf_keras

from rethink_tf.training.schedules import LearningRate, Schedule


@gin.configurable
def make_optimizer(schedule: Schedule, momentum: float = 0.9):
  return tf_keras.optimizers.SGD(learning_rate=LearningRate(schedule), momentum=momentum)


def decayed_variables(model):
  """Trainable conv/dense kernels: every variable that weight decay applies to."""
  return [v for v in model.trainable_variables if v.name.split("/")[-1].startswith("kernel")]


@gin.configurable
def weight_decay_loss(variables, weight_decay: float = 1e-4):
  if not variables or not weight_decay:
    return tf.constant(0.0)
  return 0.5 * weight_decay * tf.add_n(
      [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
