"""A gin-configured detector restored from a checkpoint, for evaluation and export."""

import os
from typing import Tuple

import tensorflow as tf
import tf_keras

from rethink_tf.data import categories
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.modeling.build import build_model
from rethink_tf.training.run_files import resolve_checkpoint  # noqa: F401 (part of this API)
from rethink_tf.training.trainer import apply_input_convention


def build_for_inference(checkpoint: str, **model_overrides) -> Tuple[tf_keras.Model, InputConfig]:
  """Builds the gin-bound model at the evaluation input size and restores `checkpoint`.

  model_overrides: attributes set on the model after building (e.g. detections_per_image,
  score_threshold). Returns (model, input config with the run's pixel convention applied);
  the synthetic dataset is not generated (call `cfg.prepare()` to evaluate on it).
  """
  cfg = apply_input_convention(InputConfig())
  categories.check_checkpoint_categories(checkpoint, cfg.category_ids)
  model = build_model(num_classes=cfg.num_classes, image_size=cfg.padded_size)
  for name, value in model_overrides.items():
    if not hasattr(model, name):
      raise AttributeError(f"the model has no attribute {name!r} to override")
    setattr(model, name, value)
  model.detect(tf.zeros([1, *cfg.padded_size, 3]), tf.constant([cfg.padded_size], tf.float32))
  status = tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f"checkpoint {checkpoint} does not hold this model's variables (was it "
                     f"trained with the same gin files?): {str(e)[:500]}") from e
  print(f"restored {os.path.basename(checkpoint)} from {os.path.dirname(checkpoint) or '.'}",
        flush=True)
  return model, cfg
