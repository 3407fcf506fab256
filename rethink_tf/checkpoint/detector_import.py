"""Whole trained detectors from detectron2 and Detectron: their files, names and layouts.

`read_weights` reads a checkpoint as data only: detectron2 model-zoo `.pkl` ({"model":
{name: array}}), detectron2 `.pth` (torch, `weights_only=True`, when torch is installed) and
Detectron `model_final.pkl` ({"blobs": {name: array}}), through the same restricted unpickler
as the backbone converter (a pickle that would run code is refused). `assign` loads the
tensors into a built `MaskRCNN`; every variable must be matched and every tensor used.

Names and layouts (source -> ours), detectron2 | Detectron:
- stem and bottlenecks: `backbone.bottom_up.stem.conv1`, `...res{s}.{i}.conv{1,2,3}`,
  `.shortcut` (+ `.norm`) | `conv1`, `res{s}_{i}_branch2{a,b,c}`, `_branch1` (+ `_gn` /
  `_bn`); conv kernels OIHW -> HWIO.
- FPN: `backbone.fpn_lateral{l}`, `backbone.fpn_output{l}` | `fpn_inner_res{l}_{n}_sum`
  (`..._lateral` below P5), `fpn_res{l}_{n}_sum`, n = the stage's last block.
- RPN: `proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}` | `conv_rpn_fpn2`,
  `rpn_cls_logits_fpn2`, `rpn_bbox_pred_fpn2` (shared by all levels); deltas reordered from
  (dx, dy, dw, dh) to (dy, dx, dh, dw).
- box head: `roi_heads.box_head.conv{k}`, `.fc{k}` | `head_conv{k}`, `fc6`, `fc7`; the first
  fc's input from a CHW to an HWC flatten.
- box predictor: `roi_heads.box_predictor.{cls_score,bbox_pred}` | `cls_score`, `bbox_pred`;
  detectron2's background logit moves from last to first and its missing background box is
  zeros here.
- mask head: `roi_heads.mask_head.mask_fcn{k}`, `.deconv`, `.predictor` | `_mask_fcn{k}`
  (`_[mask]_fcn{k}` without GN), `conv5_mask`, `mask_fcn_logits`; detectron2's missing
  background mask is zeros here.
- keypoint head: `roi_heads.keypoint_head.conv_fcn{k}`, `.score_lowres` | (not supported).
- cascade stage k: `roi_heads.box_head.{k}`, `roi_heads.box_predictor.{k}` | (none).

Weights are `.weight` / `.bias` (detectron2) or `_w` / `_b` (Detectron); norms are
`.norm.weight/.bias[/.running_mean/.running_var]` or `_gn_s/_gn_b`, `_bn_s/_bn_b` (Detectron's
BN is an AffineChannel with the statistics folded in: mean 0, var 1 - eps here).
"""

import io
import pickle
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from rethink_tf.checkpoint import weight_import

# Buffers and optimizer state that are not weights of the detector.
IGNORED_SUFFIXES = ("_momentum", "num_batches_tracked")
IGNORED_NAMES = ("pixel_mean", "pixel_std")
IGNORED_PREFIXES = ("proposal_generator.anchor_generator.",)
D2_TO_OURS_DELTAS = [1, 0, 3, 2]  # (dx, dy, dw, dh) -> (dy, dx, dh, dw)


class ImportError_(ValueError):  # noqa: N801 (not the builtin)
  """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def read_weights(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of a detectron2 (.pkl / .pth) or Detectron (.pkl) checkpoint."""
  if path.endswith((".pth", ".pt")):
    return _read_torch(path)
  try:
    with open(path, "rb") as f:
      data = weight_import.DataOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
  except OSError as e:
    raise ImportError_(f"{path}: cannot read it ({e.strerror})") from None
  except pickle.UnpicklingError as e:
    text = str(e)
    if "refusing" in text:
      raise ImportError_(f"{path}: {text}") from None
    raise ImportError_(f"{path}: not a readable pickle ({text}); truncated download?") from None
  except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
    raise ImportError_(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None
  if isinstance(data, dict):
    for key in ("model", "blobs"):
      if isinstance(data.get(key), dict):
        data = data[key]
        break
  if not isinstance(data, dict):
    raise ImportError_(f"{path}: expected a dict of arrays, got {type(data).__name__}")
  return {str(k): np.asarray(v) for k, v in data.items() if isinstance(v, np.ndarray)}


def _read_torch(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError_(f"{path}: reading .pth needs torch (pip install torch), or convert it to "
                       "a detectron2 .pkl elsewhere") from None
  try:
    data = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 (torch raises many kinds; the message says which)
    raise ImportError_(f"{path}: torch.load(weights_only=True) refused it "
                       f"({str(e).splitlines()[0]})") from None
  data = data.get("model", data) if isinstance(data, dict) else data
  return {k: v.numpy() for k, v in data.items() if hasattr(v, "numpy")}


def is_ignored(name: str) -> bool:
  return (name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES) or
          name.startswith(IGNORED_PREFIXES))


# ---------------------------------------------------------------------------------------------
# Names.


class _Scheme:
  """How one source names a conv's weight, bias and norm parameters."""

  def __init__(self, fmt: str, norm_kind: Optional[str]):
    self.fmt = fmt
    self.norm_kind = norm_kind  # Detectron: "gn" or "bn" suffix of backbone norms

  def weight(self, p):
    return f"{p}.weight" if self.fmt == "detectron2" else f"{p}_w"

  def bias(self, p):
    return f"{p}.bias" if self.fmt == "detectron2" else f"{p}_b"

  def norm(self, p):
    """Norm parameter names {gamma, beta[, moving_mean, moving_variance]} of conv `p`."""
    if self.fmt == "detectron2":
      n = f"{p}.norm"
      return {
          "gamma": f"{n}.weight", "beta": f"{n}.bias", "moving_mean": f"{n}.running_mean",
          "moving_variance": f"{n}.running_var"
      }
    return {"gamma": f"{p}_s", "beta": f"{p}_b"}


def backbone_units(model, scheme: _Scheme) -> List[Tuple[object, str, str]]:
  """(ConvNorm, conv prefix, norm prefix) of the ResNet in the source's names."""
  units = []
  for unit, conv, norm in weight_import.resnet_units(model.backbone):
    if scheme.fmt == "detectron2":
      if conv == "conv1":
        name = "backbone.bottom_up.stem.conv1"
      else:
        layer, block, part = conv.split(".", 2)
        stage = f"backbone.bottom_up.res{int(layer[5:]) + 1}.{block}"
        name = f"{stage}.shortcut" if part.startswith("downsample") else f"{stage}.{part}"
      units.append((unit, name, name))
    else:
      kind = scheme.norm_kind
      units.append(
          (unit, weight_import.detectron_name(conv, kind), weight_import.detectron_name(norm,
                                                                                        kind)))
  return units


def fpn_units(model, scheme: _Scheme, block_counts) -> List[Tuple[object, str, str]]:
  levels = model.fpn.backbone_levels
  units = []
  for i, level in enumerate(levels):
    if scheme.fmt == "detectron2":
      lat, out = f"backbone.fpn_lateral{level}", f"backbone.fpn_output{level}"
      units += [(model.fpn.lateral[i], lat, lat), (model.fpn.output_convs[i], out, out)]
    else:
      blob = f"res{level}_{block_counts[level - 2] - 1}_sum"
      lat = f"fpn_inner_{blob}" + ("" if level == levels[-1] else "_lateral")
      out = f"fpn_{blob}"
      units += [(model.fpn.lateral[i], lat, f"{lat}_gn"),
                (model.fpn.output_convs[i], out, f"{out}_gn")]
  return units


def head_units(head, prefix: str, scheme: _Scheme, name: str) -> List[Tuple[object, str, str]]:
  """The convs of a box / mask / keypoint head, named `prefix{name}{k}`."""
  out = []
  for k, conv in enumerate(head.convs):
    p = f"{prefix}{name}{k + 1}"
    out.append((conv, p, p if scheme.fmt == "detectron2" else f"{p}_gn"))
  return out


# ---------------------------------------------------------------------------------------------
# Assignment.


class _Assigner:
  """Sets variables from source tensors, tracking which tensors were used and which variables
  were set."""

  def __init__(self, tensors: Dict[str, np.ndarray], path: str):
    self.tensors, self.path = tensors, path
    self.used, self.missing, self.assigned = set(), [], set()

  def take(self, name: str) -> Optional[np.ndarray]:
    if name not in self.tensors:
      self.missing.append(name)
      return None
    self.used.add(name)
    return np.asarray(self.tensors[name], np.float32)

  def set(self, var, value: Optional[np.ndarray], source: str):
    if value is None:
      return
    if tuple(var.shape) != tuple(value.shape):
      raise ImportError_(f"{self.path}: tensor {source} has shape {tuple(value.shape)} but "
                         f"{var.name} needs {tuple(var.shape)} after conversion")
    var.assign(value)
    self.assigned.add(var.ref())

  def conv(self, layer, prefix: str, scheme: _Scheme, out_perm=None, transform=None):
    """A Conv2D / Conv2DTranspose / Dense from `prefix` (OIHW or [out, in] source layout)."""
    w = self.take(scheme.weight(prefix))
    if w is not None:
      if transform is not None:
        w = transform(w)
      elif w.ndim == 4:
        w = w.transpose(2, 3, 1, 0)
      else:
        w = w.T
      if out_perm is not None:
        w = out_perm(w, axis=-1)
    self.set(layer.kernel, w, scheme.weight(prefix))
    if getattr(layer, "use_bias", False):
      b = self.take(scheme.bias(prefix))
      if b is not None and out_perm is not None:
        b = out_perm(b, axis=-1)
      self.set(layer.bias, b, scheme.bias(prefix))

  def conv_norm(self, unit, conv: str, norm: str, scheme: _Scheme):
    self.conv(unit.conv, conv, scheme)
    layer = unit.norm
    if layer is None:
      return
    names = scheme.norm(norm)
    for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
      var = getattr(layer, attr, None)
      if var is None:
        continue
      if attr in names:
        self.set(var, self.take(names[attr]), names[attr])
      else:  # Detectron's folded BN: the statistics are inside scale and bias
        size = var.shape[0]
        value = (np.zeros([size], np.float32) if attr == "moving_mean" else np.full(
            [size], 1.0 - weight_import.BN_EPSILON, np.float32))
        self.set(var, value, names["gamma"])

  def finish(self, model):
    unused = sorted(n for n in self.tensors if n not in self.used and not is_ignored(n))
    if self.missing:
      raise ImportError_(f"{self.path}: {len(self.missing)} tensors the model needs are missing: "
                         f"{', '.join(self.missing[:12])}"
                         f"{' ...' if len(self.missing) > 12 else ''}")
    if unused:
      raise ImportError_(f"{self.path}: {len(unused)} tensors match no variable of the model: "
                         f"{', '.join(unused[:12])}{' ...' if len(unused) > 12 else ''}")
    unset = [v.name for v in model.variables if v.ref() not in self.assigned]
    if unset:
      raise ImportError_(f"{self.path}: {len(unset)} variables were not matched by any tensor: "
                         f"{', '.join(unset[:12])}")


def _permute_deltas(x, axis=-1):
  """Reorders groups of 4 along `axis` from (dx, dy, dw, dh) to (dy, dx, dh, dw)."""
  shape = x.shape
  x = np.moveaxis(x, axis, -1)
  x = x.reshape(x.shape[:-1] + (-1, 4))[..., D2_TO_OURS_DELTAS].reshape(x.shape)
  return np.moveaxis(x, -1, axis).reshape(shape)


def assign(model, tensors: Dict[str, np.ndarray], fmt: str, block_counts, path: str):
  """Loads `tensors` (names of `fmt`) into the built `model`; raises ImportError_."""
  kinds = {
      "gn" if n.endswith("_gn_s") else "bn"
      for n in tensors
      if n.startswith("res") and n.endswith(("_gn_s", "_bn_s"))
  }
  scheme = _Scheme(fmt, "gn" if "gn" in kinds else "bn")
  a = _Assigner(tensors, path)
  d2 = fmt == "detectron2"
  units = backbone_units(model, scheme) + fpn_units(model, scheme, block_counts)
  for unit, conv, norm in units:
    a.conv_norm(unit, conv, norm, scheme)

  rpn = "proposal_generator.rpn_head." if d2 else ""
  a.conv(model.rpn_head.conv, f"{rpn}conv" if d2 else "conv_rpn_fpn2", scheme)
  a.conv(model.rpn_head.objectness, f"{rpn}objectness_logits" if d2 else "rpn_cls_logits_fpn2",
         scheme)
  a.conv(model.rpn_head.deltas,
         f"{rpn}anchor_deltas" if d2 else "rpn_bbox_pred_fpn2",
         scheme,
         out_perm=_permute_deltas)

  stages = [(model.roi_heads.box_head, model.roi_heads.box_predictor)] + list(
      zip(getattr(model.roi_heads, "cascade_box_heads", []),
          getattr(model.roi_heads, "cascade_box_predictors", [])))
  for k, (head, predictor) in enumerate(stages):
    box = (f"roi_heads.box_head.{k}." if len(stages) > 1 else "roi_heads.box_head.") if d2 else ""
    pred = (f"roi_heads.box_predictor.{k}." if len(stages) > 1 else "roi_heads.box_predictor.") \
        if d2 else ""
    for unit, conv, norm in head_units(head, box, scheme, "conv" if d2 else "head_conv"):
      a.conv_norm(unit, conv, norm, scheme)
    fc_names = ([f"{box}fc{i + 1}" for i in range(len(head.fcs))]
                if d2 else ["fc6", "fc7"][:len(head.fcs)])
    channels = head.convs[-1].filters if head.convs else None
    for i, (fc, name) in enumerate(zip(head.fcs, fc_names)):
      if i == 0:
        size = model.roi_heads.poolers["box"][0]
        in_c = channels or fc.kernel.shape[0] // (size * size)
        a.conv(fc,
               name,
               scheme,
               transform=lambda w, c=in_c, s=size: weight_import.fc6_kernel(w, (s, s, c)))
      else:
        a.conv(fc, name, scheme)
    _assign_predictor(a, predictor, pred, scheme)
  if len(stages) > 1:  # a trained Cascade R-CNN: every stage takes part in inference
    model.roi_heads.cascade_active.assign(True)
    a.assigned.add(model.roi_heads.cascade_active.ref())

  if model.roi_heads.branch("mask") is not None:
    mh = model.roi_heads.branch("mask")
    prefix = "roi_heads.mask_head." if d2 else ""
    name = "mask_fcn" if d2 else ("_mask_fcn" if mh.convs[0].norm is not None else "_[mask]_fcn")
    for unit, conv, norm in head_units(mh, prefix, scheme, name):
      a.conv_norm(unit, conv, norm, scheme)
    a.conv(mh.deconv, f"{prefix}deconv" if d2 else "conv5_mask", scheme)
    a.conv(mh.predictor,
           f"{prefix}predictor" if d2 else "mask_fcn_logits",
           scheme,
           out_perm=(lambda x, axis: _background_first(x, axis, 1)) if d2 else None)

  if model.roi_heads.branch("keypoint") is not None:
    kh = model.roi_heads.branch("keypoint")
    for unit, conv, norm in head_units(kh, "roi_heads.keypoint_head.", scheme, "conv_fcn"):
      a.conv_norm(unit, conv, norm, scheme)
    a.conv(kh.score_lowres, "roi_heads.keypoint_head.score_lowres", scheme)
  a.finish(model)


def _background_first(x, axis: int, group: int, background_last: bool = False):
  """detectron2's K per-class outputs (groups of `group` along `axis`) -> ours: a zero
  background group first; `background_last`: the source's K + 1 groups end with background,
  which moves first."""
  x = np.moveaxis(x, axis, -1)
  groups = x.reshape(x.shape[:-1] + (-1, group))
  if background_last:
    groups = np.concatenate([groups[..., -1:, :], groups[..., :-1, :]], axis=-2)
  else:
    groups = np.concatenate([np.zeros_like(groups[..., :1, :]), groups], axis=-2)
  return np.moveaxis(groups.reshape(x.shape[:-1] + (-1,)), -1, axis)


def _assign_predictor(a: _Assigner, predictor, prefix: str, scheme: _Scheme):
  d2 = scheme.fmt == "detectron2"
  a.conv(predictor.cls_score,
         f"{prefix}cls_score",
         scheme,
         out_perm=(lambda x, axis: _background_first(x, axis, 1, background_last=True))
         if d2 else None)
  if predictor.class_agnostic:
    if d2:
      perm = _permute_deltas
    else:  # Detectron's agnostic regressor has a background and a foreground box
      perm = lambda x, axis: _permute_deltas(np.take(x, range(4, 8), axis=axis), axis)
  elif d2:
    perm = lambda x, axis: _background_first(_permute_deltas(x, axis), axis, 4)
  else:
    perm = _permute_deltas
  a.conv(predictor.bbox_pred, f"{prefix}bbox_pred", scheme, out_perm=perm)


def check_finite(model, path: str):
  bad = [
      v.name
      for v in model.variables
      if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))
  ]
  if bad:
    raise ImportError_(f"{path}: non-finite values in {', '.join(bad[:8])}")
