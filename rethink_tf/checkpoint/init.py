"""Initialization modes and their guard rails.

The init mode is an explicit, validated choice. Scratch training with frozen BN statistics
or frozen early stages is refused: the paper's first Detectron scratch runs froze conv1+res2
at random values and lost 3 AP (36.2 vs 39.5). An empty checkpoint path never silently
means "scratch".
"""

import enum
import json
import os
from typing import Optional

import gin
import tensorflow as tf


class InitMode(enum.Enum):
  SCRATCH = "scratch"
  PRETRAINED = "pretrained"


class InitError(ValueError):
  """A configuration that contradicts the chosen init mode."""


@gin.configurable
def init_config(mode: str = "scratch", checkpoint: Optional[str] = None):
  """Returns (InitMode, backbone checkpoint path). Bound by gin_configs/init/*.gin."""
  try:
    return InitMode(mode), checkpoint
  except ValueError:
    raise InitError(f"init mode {mode!r} is not one of {[m.value for m in InitMode]}") from None


def validate(mode: InitMode, norm: Optional[str], freeze_at: int, checkpoint: Optional[str]):
  """Raises InitError for incompatible choices; called before any training starts."""
  if mode is InitMode.SCRATCH:
    if norm == "FrozenBN":
      raise InitError(
          "init mode 'scratch' with norm 'FrozenBN': frozen BN statistics of a randomly "
          "initialized network are meaningless. Use norm 'GN' or 'SyncBN' for training from "
          "scratch (the paper's recipe), or init mode 'pretrained'.")
    if freeze_at > 0:
      raise InitError(
          f"init mode 'scratch' with freeze_at={freeze_at}: this would freeze randomly "
          "initialized layers (the paper's early scratch runs lost 3 AP this way). Bind "
          "build_model.freeze_at = 0.")
    if checkpoint:
      raise InitError(f"init mode 'scratch' was given a checkpoint ({checkpoint}); use "
                      "init mode 'pretrained' to restore it.")
  elif mode is InitMode.PRETRAINED:
    if not checkpoint:
      raise InitError("init mode 'pretrained' needs a backbone checkpoint: bind "
                      "init_config.checkpoint = '/path/to/ckpt' (an empty path never means "
                      "scratch).")


def restore_backbone(backbone, checkpoint: str):
  """Restores backbone weights from a TF checkpoint written by `save_backbone`.

  The backbone must be built. Every backbone variable must be matched; otherwise the error
  lists the unmatched names.
  """
  if not backbone.built:
    raise InitError("restore_backbone needs a built backbone (call the model once first)")
  ckpt = tf.train.Checkpoint(backbone=backbone)
  status = ckpt.read(checkpoint)  # the counterpart of `write`: no save counter involved
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise InitError(f"backbone checkpoint {checkpoint} does not match the model: {e}") from e
  return status


def save_backbone(backbone, prefix: str, box_head=None) -> str:
  """Writes the backbone's variables as a TF checkpoint restorable by `restore_backbone`.

  `box_head`: also the ImageNet fc layers that serve as RoI head (VGG-16's fc6/fc7).
  """
  objects = dict(backbone=backbone)
  if box_head is not None:
    objects["box_head"] = box_head
  return tf.train.Checkpoint(**objects).write(prefix)


def restore_pretrained(model, checkpoint: str):
  """Restores the backbone, and the box head when the checkpoint carries one (VGG-16)."""
  restore_backbone(model.backbone, checkpoint)
  names = [n for n, _ in tf.train.list_variables(checkpoint)]
  if any(n.startswith("box_head/") for n in names):
    status = tf.train.Checkpoint(box_head=model.roi_heads.box_head).read(checkpoint)
    try:
      status.assert_existing_objects_matched()
    except AssertionError as e:
      raise InitError(f"box head in {checkpoint} does not match the model: {e}") from e


def input_convention(checkpoint: Optional[str]) -> Optional[dict]:
  """The pixel convention written beside a converted checkpoint (`CKPT.json`), if any.

  Returns {"channel_order": "RGB"|"BGR", "pixel_mean": [3], "pixel_std": [3],
  "stride_in_1x1": bool} or None.
  """
  if not checkpoint or not os.path.exists(checkpoint + ".json"):
    return None
  with open(checkpoint + ".json") as f:
    meta = json.load(f)
  return {
      k: meta[k] for k in ("channel_order", "pixel_mean", "pixel_std", "stride_in_1x1") if k in meta
  }
