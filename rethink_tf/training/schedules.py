"""The paper's "Nx" learning-rate schedule, derived in Python from a few gin values.

1x = 90k iterations at global batch 16; Nx = N * 90k. From 2x on, the LR drops x0.1 in the last
60k and again in the last 20k iterations whatever N is (so 3x = 270k with drops at 210k and
250k), as the paper does; 1x is Detectron's standard schedule (drops at 60k and 80k, i.e. the
last 30k and 10k), and shorter schedules shrink the decay windows in the same proportion.
Linear warmup from `warmup_factor` over 500 iterations (Detectron). Iteration counts scale by
16 / global_batch_size; `iteration_scale` shrinks everything for the CPU demo.
"""

import dataclasses
from typing import Tuple

import gin
import tensorflow as tf
import tf_keras

REFERENCE_BATCH = 16
ITERS_1X = 90_000
LAST_DECAYS = (60_000, 20_000)
WARMUP_ITERS = 500


@dataclasses.dataclass(frozen=True)
class Schedule:
  total_steps: int
  boundaries: Tuple[int, ...]
  base_lr: float
  warmup_steps: int
  warmup_factor: float
  decay_factor: float

  def lr_at(self, step: int) -> float:
    """Host-side LR for `step` (the same function as `LearningRate`)."""
    lr = self.base_lr * self.decay_factor**sum(step >= b for b in self.boundaries)
    if step < self.warmup_steps:
      alpha = step / self.warmup_steps
      lr *= self.warmup_factor * (1 - alpha) + alpha
    return lr


@gin.configurable
def nx_schedule(num_x: float = 1.0,
                global_batch_size: int = 16,
                base_lr_per_16: float = 0.02,
                warmup_factor: float = 1.0 / 3,
                decay_factor: float = 0.1,
                iteration_scale: float = 1.0,
                base_lr=None,
                warmup_steps=None) -> Schedule:
  """Derives total steps, decay boundaries, warmup and LR for an `Nx` schedule.

  Args:
    num_x: schedule length in multiples of 90k iterations at batch 16.
    global_batch_size: images per step over all replicas.
    base_lr_per_16: LR at batch 16 (linear scaling rule for other batches).
    iteration_scale: multiplies every iteration count (1.0 for the paper; small for demos).
    base_lr: explicit LR, overriding the linear scaling rule (e.g. the paper's 35k recipe).
    warmup_steps: explicit warmup length in steps, overriding the rescaled 500 iterations
      (short demo schedules would otherwise warm up for a step or two).
  """
  if num_x <= 0:
    raise ValueError(f"nx_schedule.num_x must be positive, got {num_x}")
  scale = REFERENCE_BATCH / global_batch_size * iteration_scale
  total = int(round(num_x * ITERS_1X * scale))
  window = min(1.0, num_x / 2.0)  # 1x: last 30k/10k (Detectron's 60k, 80k); 2x on: 60k/20k
  boundaries = tuple(int(round(total - d * window * scale)) for d in LAST_DECAYS)
  warmup = warmup_steps or max(1, int(round(WARMUP_ITERS * scale)))
  lr = base_lr if base_lr is not None else base_lr_per_16 * global_batch_size / REFERENCE_BATCH
  return Schedule(total, boundaries, lr, warmup, warmup_factor, decay_factor)


class LearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
  """In-graph piecewise-constant LR with linear warmup, for a `Schedule`."""

  def __init__(self, schedule: Schedule):
    super().__init__()
    self.schedule = schedule

  def __call__(self, step):
    s = self.schedule
    step = tf.cast(step, tf.float32)
    lr = tf.constant(s.base_lr, tf.float32)
    for b in s.boundaries:
      lr = tf.where(step >= b, lr * s.decay_factor, lr)
    alpha = tf.minimum(step / s.warmup_steps, 1.0)
    return lr * (s.warmup_factor * (1.0 - alpha) + alpha)

  def get_config(self):
    return dataclasses.asdict(self.schedule)
