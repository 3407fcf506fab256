"""The Nx schedule rule: total iterations, decays in the last 60k/20k (1x: Detectron's 60k, 80k),
warmup, linear LR."""

import pytest
import tensorflow as tf

from rethink_tf.training.schedules import LearningRate, nx_schedule


@pytest.mark.parametrize(
    "num_x,batch,total,bounds,warmup,lr",
    [
        (1, 16, 90_000, (60_000, 80_000), 500, 0.02),  # Detectron's 1x
        (0.5, 16, 45_000, (30_000, 40_000), 500, 0.02),
        (2, 16, 180_000, (120_000, 160_000), 500, 0.02),
        (3, 16, 270_000, (210_000, 250_000), 500, 0.02),
        (6, 16, 540_000, (480_000, 520_000), 500, 0.02),
        (9, 64, 202_500, (187_500, 197_500), 125, 0.08),
    ])
def test_paper_schedules(num_x, batch, total, bounds, warmup, lr):
  s = nx_schedule(num_x=num_x, global_batch_size=batch)
  assert (s.total_steps, s.boundaries, s.warmup_steps) == (total, bounds, warmup)
  assert s.base_lr == pytest.approx(lr)
  assert s.warmup_factor == pytest.approx(1 / 3) and s.decay_factor == 0.1


def test_graph_lr_equals_host_lr():
  s = nx_schedule(num_x=3, global_batch_size=16)
  fn = LearningRate(s)
  for step in [0, 250, 499, 500, 209_999, 210_000, 249_999, 250_000, 269_999]:
    assert float(fn(tf.constant(step))) == pytest.approx(s.lr_at(step), rel=1e-6)
  assert s.lr_at(0) == pytest.approx(0.02 / 3)
  assert s.lr_at(1000) == pytest.approx(0.02)
  assert s.lr_at(220_000) == pytest.approx(0.002)
  assert s.lr_at(260_000) == pytest.approx(0.0002)


def test_explicit_lr_and_too_short_schedule():
  assert nx_schedule(num_x=2, global_batch_size=16, base_lr=0.04).base_lr == 0.04
  with pytest.raises(ValueError, match="num_x must be positive"):
    nx_schedule(num_x=0)
