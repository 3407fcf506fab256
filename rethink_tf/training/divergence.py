"""Divergence: a step whose loss or gradients are not finite never updates the model.

The train step checks the loss and the gradients (all replicas agree on the verdict) and
applies the update only when every value is finite; otherwise it only advances
`optimizer.iterations`, so the schedule and the data position stay those of the step count.
The loop ends its call at such a step and the trainer stops the run, or skips the step while
`TrainConfig.skip_nonfinite_steps` allows. The model and optimizer state stay those of the
last good step, and nothing is saved after the bad one.
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf


def all_finite(loss: tf.Tensor, grads: Sequence[Optional[tf.Tensor]]) -> tf.Tensor:
  """Scalar bool: the loss and every gradient are finite (None gradients are ignored)."""
  checks = [tf.reduce_all(tf.math.is_finite(loss))]
  checks += [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
  return tf.reduce_all(tf.stack(checks))


def apply_gradients_if(optimizer, grads_and_vars, finite: tf.Tensor,
                       skipped_steps: tf.Variable) -> tf.Tensor:
  """In replica context: applies the gradients when `finite` (the same value on every
  replica), else adds 1 to `optimizer.iterations` and `skipped_steps` and leaves every
  variable and slot as it was. Returns the verdict (bool scalar).

  The branch runs in cross-replica context (as Keras' LossScaleOptimizer does it): an
  optimizer's gradient all-reduce cannot sit inside a `tf.cond` in replica context under
  MirroredStrategy.
  """

  def cross_replica(strategy, grads_and_vars, finite):
    verdict = strategy.experimental_local_results(finite)[0]

    def apply():
      strategy.extended.call_for_each_replica(optimizer.apply_gradients, args=(grads_and_vars,))
      return tf.constant(True)

    def skip():
      optimizer.iterations.assign_add(1)
      skipped_steps.assign_add(1)
      return tf.constant(False)

    return tf.cond(verdict, apply, skip)

  return tf.distribute.get_replica_context().merge_call(cross_replica,
                                                        args=(list(grads_and_vars), finite))


DETECTION_ADVICE = ("lower the learning rate (nx_schedule.base_lr_per_16), lengthen the warmup "
                    "(nx_schedule.warmup_steps), or allow skipping such steps "
                    "(TrainConfig.skip_nonfinite_steps = N)")


def nonfinite_message(step: int,
                      losses: Dict[str, float],
                      skipped: int,
                      allowed: int,
                      last_checkpoint: Optional[str],
                      advice: str = DETECTION_ADVICE) -> str:
  """The error (or warning) for a non-finite step: the step, every loss term, what happened
  to the update, the last good checkpoint and what to do (`advice`)."""
  terms = ", ".join(f"{k}={v:.6g}" for k, v in losses.items())
  what = ("loss" if not all(_finite(v) for v in losses.values()) else "gradient")
  head = f"non-finite {what} at step {step} ({terms}): the step's update was not applied"
  if skipped <= allowed:
    return (f"{head}; skipped ({skipped} of TrainConfig.skip_nonfinite_steps = {allowed} "
            "used)")
  last = (f"the last good checkpoint is {last_checkpoint}, intact; run the same command to "
          "resume from it"
          if last_checkpoint else "no checkpoint was written yet; the run restarts from step 0")
  return (f"{head} and the run stopped ({skipped} non-finite step(s), {allowed} allowed); "
          f"{last}. If it recurs: {advice}.")


def _finite(v: float) -> bool:
  return v == v and v not in (float("inf"), float("-inf"))
