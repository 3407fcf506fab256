"""The gin-configured detector with its variables created: one construction for training,
evaluation and export.

Training validates the init mode and the run's bindings before any step; inference checks the
checkpoint's categories and restores it. Both build the model at the input configuration's
padded size and create every variable by running inference once on zeros.
"""

import os
from typing import Optional

import tensorflow as tf
import tf_keras
from absl import logging

from rethink_tf.checkpoint import init as init_lib
from rethink_tf.checkpoint import legacy_layout
from rethink_tf.data import categories
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.errors import ConfigError
from rethink_tf.modeling.build import build_model


def init_choice():
  """(init mode, backbone checkpoint, its converter's pixel convention or None) from gin."""
  mode, checkpoint = init_lib.init_config()
  pretrained = mode is init_lib.InitMode.PRETRAINED
  return mode, checkpoint, init_lib.input_convention(checkpoint) if pretrained else None


def apply_input_convention(cfg: InputConfig) -> InputConfig:
  """Pretrained weights see the pixels they were trained on (channel order, mean, std)."""
  _, checkpoint, convention = init_choice()
  if convention:
    cfg.channel_order = convention["channel_order"]
    cfg.pixel_mean = tuple(convention["pixel_mean"])
    cfg.pixel_std = tuple(convention["pixel_std"])
    logging.info(f"input convention of {checkpoint}: {convention['channel_order']}, mean "
                 f"{convention['pixel_mean']}, std {convention['pixel_std']}")
  return cfg


def build_detector(cfg: InputConfig,
                   *,
                   training: bool = False,
                   checkpoint: Optional[str] = None,
                   **model_overrides) -> tf_keras.Model:
  """Builds `build_model` for `cfg` (classes, padded size) with every variable created.

  training: validate the init mode (guard rails of `checkpoint/init.py`), the keypoint count
    and the box convention before any step; raises ConfigError / InitError.
  checkpoint: restore this checkpoint after building (inference); its `categories.json`, when
    present, must name `cfg.category_ids`. Raises ValueError when it does not hold the
    model's variables.
  model_overrides: attributes set on the model after building (e.g. detections_per_image,
    score_threshold).
  """
  if checkpoint:
    categories.check_checkpoint_categories(checkpoint, cfg.category_ids)
  model = build_model(num_classes=cfg.num_classes, image_size=cfg.padded_size)
  for name, value in model_overrides.items():
    if not hasattr(model, name):
      raise AttributeError(f"the model has no attribute {name!r} to override")
    setattr(model, name, value)
  if training:
    _validate_for_training(model, cfg)
  model.detect(tf.zeros([1, *cfg.padded_size, 3]), tf.constant([cfg.padded_size], tf.float32))
  if checkpoint:
    _restore(model, checkpoint)
  return model


def _validate_for_training(model, cfg: InputConfig):
  mode, checkpoint, convention = init_choice()
  model.check_data(cfg)  # each RoI branch against the data it trains on
  if cfg.keypoint_names and model.roi_heads.branch("keypoint") is None:
    raise ConfigError(
        "build_model.num_keypoints = 0 but InputConfig.keypoint_names names "
        f"{len(cfg.keypoint_names)} keypoints: bind both (the head's outputs are the data's "
        "keypoints)")
  if model.box_plus_one:
    raise ConfigError(
        "build_model.box_plus_one (Detectron's \"+1\" box widths) is for converted Detectron "
        "models at inference: training encodes continuous boxes; leave it False to train")
  init_lib.validate(mode, model.backbone.norm, model.backbone.freeze_at, checkpoint)
  # The backbone's layout choices (ResNet's stride_in_1x1) must be the converted weights'.
  wanted = model.backbone.weight_convention()
  for key in sorted(set(wanted) | {"stride_in_1x1"}) if convention else ():
    if convention.get(key, False) != wanted.get(key, False):
      raise init_lib.InitError(
          f"{checkpoint} was converted with {key}={convention.get(key, False)} but the model "
          f"binds build_model.{key} = {wanted.get(key, False)}")


def _restore(model, checkpoint: str):
  root = legacy_layout.restore_root(model, checkpoint)
  status = tf.train.Checkpoint(model=root).restore(checkpoint).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f"checkpoint {checkpoint} does not hold this model's variables (was it "
                     f"trained with the same gin files?): {str(e)[:500]}") from e
  logging.info(f"restored {os.path.basename(checkpoint)} from {os.path.dirname(checkpoint) or '.'}")
