"""Settings of a training run: batch, precision and compilation (the task), checkpoint,
evaluation and logging periods (the hooks) and warm start."""

from typing import Optional

import gin

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@gin.configurable
class TrainConfig:
  """Loop settings. `global_batch_size` is the one source of the batch: the schedule and the
  per-replica pipelines derive from it."""

  def __init__(self,
               global_batch_size: int = 16,
               eval_every_steps: int = 0,
               checkpoint_every_steps: int = 5000,
               keep_checkpoints: int = 5,
               log_every_steps: int = 20,
               steps_per_loop: int = 1,
               seed: Optional[int] = 0,
               jit_compile: bool = False,
               eval_batch_size: int = 8,
               stop_at_step: Optional[int] = None,
               precision: str = "float32",
               eval_image_summaries: int = 4,
               skip_nonfinite_steps: int = 0,
               warm_start_checkpoint: Optional[str] = None,
               warm_start_keeps_step: bool = True):
    self.global_batch_size = global_batch_size
    self.eval_every_steps = eval_every_steps
    self.checkpoint_every_steps = checkpoint_every_steps
    self.keep_checkpoints = keep_checkpoints
    self.log_every_steps = log_every_steps
    self.steps_per_loop = steps_per_loop
    self.seed = seed
    self.jit_compile = jit_compile
    self.eval_batch_size = eval_batch_size
    self.stop_at_step = stop_at_step  # end early (e.g. a time-boxed slice of a long run)
    # Validation images drawn with their detections at every evaluation (0: none).
    self.eval_image_summaries = eval_image_summaries
    # Steps with a non-finite loss or gradient are never applied; the run stops at the first
    # one, or once more than this many were skipped (counted over the whole run).
    self.skip_nonfinite_steps = skip_nonfinite_steps
    # A new run (no checkpoint in model_dir yet) starts from another run's checkpoint: the
    # variables that fit are restored, the others keep their init (checkpoint/warm_start.py);
    # with warm_start_keeps_step the schedule continues at that checkpoint's step (e.g. a
    # plain run's step 135k continued with more box stages).
    self.warm_start_checkpoint = warm_start_checkpoint
    self.warm_start_keeps_step = warm_start_keeps_step
    if precision not in PRECISIONS:
      raise ValueError(f"TrainConfig.precision {precision!r} is not one of {PRECISIONS}")
    # mixed_*: convs and fcs compute in bfloat16/float16 with float32 variables; GN/BN
    # statistics, RoIAlign sampling, the final logits and the losses stay float32;
    # mixed_float16 adds dynamic loss scaling.
    self.precision = precision
