"""FLOP counts and this CPU's dense matmul rate, for the FLOP-utilization figure.

The count is analytic: TF's per-op FLOP statistics (2 x multiply-adds of every Conv2D, MatMul,
Conv2DBackpropInput used as a deconvolution, ...) evaluated on the static shapes of the traced
forward graph. Training costs about 3x the forward pass (each conv/matmul has one forward and
two backward products of the same size), which is the convention of the FLOP-utilization
figures in the literature (e.g. MFU in the PaLM paper).
"""

import time

import tensorflow as tf

TRAIN_FLOPS_PER_FORWARD = 3.0


def graph_flops(concrete_fn) -> int:
  """Total FLOPs of the ops with registered FLOP statistics in a concrete function's graph."""
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  prof = tf.compat.v1.profiler.profile(concrete_fn.graph, options=opts)
  return int(prof.total_float_ops)


def our_train_forward_flops(model,
                            batch: int,
                            size: int,
                            max_instances: int = 100,
                            mask_size: int = 112) -> int:
  """FLOPs of our model's training forward pass (backbone, FPN, RPN, RoI heads)."""
  spec = dict(images=tf.TensorSpec([batch, size, size, 3]),
              image_size=tf.TensorSpec([batch, 2]),
              gt_boxes=tf.TensorSpec([batch, max_instances, 4]),
              gt_classes=tf.TensorSpec([batch, max_instances], tf.int32),
              gt_masks=tf.TensorSpec([batch, max_instances, mask_size, mask_size]),
              crowd_boxes=tf.TensorSpec([batch, 10, 4]))
  fn = tf.function(lambda inputs: model.train_outputs(inputs))
  return graph_flops(fn.get_concrete_function(spec))


def matmul_flops_per_second(dtype=tf.float32, n: int = 2048, reps: int = 5) -> float:
  """Median FLOP/s of an n x n x n matmul in `dtype` (oneDNN on this CPU)."""
  a = tf.cast(tf.random.normal([n, n], seed=1), dtype)
  b = tf.cast(tf.random.normal([n, n], seed=2), dtype)
  mm = tf.function(tf.matmul)
  mm(a, b).numpy()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    mm(a, b).numpy()
    times.append(time.perf_counter() - t)
  return 2.0 * n**3 / sorted(times)[len(times) // 2]
