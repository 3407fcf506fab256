"""The interface every backbone implements, and the registry `build_model` builds from.

A new backbone is a module in this package that defines a layer with the `Backbone` interface
and registers its builder with `@register("name")` on a function (settings: BackboneSettings)
-> Backbone; `modeling/build.py` imports the module (the registration runs at import), and
`build_model.backbone = "name"` then selects it.
"""

import dataclasses
from typing import Callable, Dict, Optional, Protocol, Sequence, runtime_checkable

import tensorflow as tf


@runtime_checkable
class Backbone(Protocol):
  """images [B, H, W, 3] -> {level: [B, H / 2^level, W / 2^level, out_channels[level]]}.

  out_channels: {level: channels} of the outputs; norm: its normalization ("GN", "SyncBN",
  "FrozenBN", "BN" or None), freeze_at: stages kept frozen (the init guard rails read both).
  `weight_convention()`: the layout choices a pretrained checkpoint must have been converted
  with ({} when there are none).
  """

  out_channels: Dict[int, int]
  norm: Optional[str]
  freeze_at: int

  def __call__(self, images: tf.Tensor, training=None) -> Dict[int, tf.Tensor]:
    ...

  def weight_convention(self) -> Dict[str, object]:
    ...


@dataclasses.dataclass(frozen=True)
class BackboneSettings:
  """Every backbone setting `build_model` binds (its defaults are gin's, in `build_model`);
  a backbone reads the ones it has."""
  norm: Optional[str]
  gn_num_groups: int
  freeze_at: int
  width_multiplier: float
  depth: int
  groups: int
  width_per_group: int
  block_counts: Optional[Sequence[int]]
  stride_in_1x1: bool


_REGISTRY: Dict[str, Callable[[BackboneSettings], Backbone]] = {}


def register(name: str):
  """Decorator: registers a builder (settings) -> Backbone under `name`."""

  def wrap(builder):
    if name in _REGISTRY:
      raise ValueError(f"backbone {name!r} is registered twice")
    _REGISTRY[name] = builder
    return builder

  return wrap


def names():
  return tuple(_REGISTRY)


def build(name: str, settings: BackboneSettings) -> Backbone:
  """The registered backbone `name`, built from `settings` (its layer is named "backbone", so
  checkpoints keep the path `model/backbone`)."""
  if name not in _REGISTRY:
    raise ValueError(f"build_model.backbone {name!r} is not one of {names()}")
  return _REGISTRY[name](settings)
