"""A gin-configured detector restored from a checkpoint, for evaluation and export."""

from typing import Tuple

import tf_keras

from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.detector import apply_input_convention, build_detector
from rethink_tf.run_files import resolve_checkpoint  # noqa: F401 (part of this API)


def build_for_inference(checkpoint: str, **model_overrides) -> Tuple[tf_keras.Model, InputConfig]:
  """Builds the gin-bound model at the evaluation input size and restores `checkpoint`.

  model_overrides: attributes set on the model after building (e.g. detections_per_image,
  score_threshold). Returns (model, input config with the run's pixel convention applied);
  the synthetic dataset is not generated (call `cfg.prepare()` to evaluate on it).
  """
  cfg = apply_input_convention(InputConfig())
  return build_detector(cfg, checkpoint=checkpoint, **model_overrides), cfg
