"""Checkpoints written before the RoI heads became one layer keep loading.

Those checkpoints hold the heads directly under the model (`model/box_head/...`,
`model/mask_head/...`, `model/cascade_box_heads/0/...`, `model/cascade_active`); today they are
under `model/roi_heads/`. The layers, their variables and the order of the optimizer's slots are
the same, so restoring such a checkpoint is a matter of paths: `restore_root(model, path)` gives
the object to restore `model` through, the model itself or a view of it with the old paths.
A checkpoint written after a resume has today's layout.
"""

import tensorflow as tf

# Attributes of the RoI heads that were attributes of the model.
_MOVED = ("box_head", "box_predictor", "mask_head", "keypoint_head", "cascade_box_heads",
          "cascade_box_predictors", "cascade_active")


def is_legacy(checkpoint: str, prefix: str = "model") -> bool:
  """True when `checkpoint` (a prefix) holds the heads directly under `prefix`."""
  return any(
      name.startswith(f"{prefix}/box_head/") for name, _ in tf.train.list_variables(checkpoint))


def legacy_view(model) -> tf.Module:
  """A trackable with the model's objects at their old paths (restore through it)."""
  view = tf.Module()
  for name in ("backbone", "fpn", "rpn_head"):
    part = getattr(model, name, None)
    if part is not None:
      setattr(view, name, part)
  for name in _MOVED:
    part = getattr(model.roi_heads, name, None)
    if part is not None:
      setattr(view, name, part)
  return view


def restore_root(model, checkpoint: str):
  """`model`, or its `legacy_view` when `checkpoint` has the old layout."""
  return legacy_view(model) if is_legacy(checkpoint) else model
