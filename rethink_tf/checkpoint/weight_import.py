"""Reading ImageNet backbone weights from public releases and loading them into our ResNet.

Sources (all read as data, never executed):
  * torchvision / timm state dicts: `.npz` (allow_pickle=False), `.safetensors` (the
    safetensors numpy API) or `.pth` (torch, `weights_only=True`, when torch is installed);
  * Detectron / detectron2 Caffe2 `.pkl` blobs, through an unpickler that admits only dicts,
    lists, strings, numbers and numpy arrays. BN models store AffineChannel scale/bias
    (`_bn_s`, `_bn_b`) with the statistics folded in (eps 1e-5): they load into FrozenBN as
    gamma = s, beta = b, mean = 0, var = 1 - eps, which reproduces s and b exactly.
"""

import io
import pickle
from typing import Dict, Iterator, Tuple

import numpy as np

BN_EPSILON = 1e-5

# --------------------------------------------------------------------------------------------
# Reading files.


class DataOnlyUnpickler(pickle.Unpickler):
  """Admits numpy arrays and plain containers; any other global is refused."""

  ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"),
      ("collections", "OrderedDict"),
      ("builtins", "dict"),
      ("builtins", "list"),
      ("builtins", "tuple"),
      ("builtins", "set"),
      # Protocol-2 pickles rebuild array bytes with _codecs.encode(str, "latin1"): it only
      # turns a string into bytes.
      ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) in self.ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: weight files may only hold arrays and plain "
        "containers (a pickle can run code)")


def load_pickle_blobs(path: str) -> Dict[str, np.ndarray]:
  """Detectron `.pkl`: {"blobs": {name: array}} or a flat {name: array} dict."""
  with open(path, "rb") as f:
    data = DataOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
  if isinstance(data, dict) and "blobs" in data:
    data = data["blobs"]
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a dict of blobs, got {type(data).__name__}")
  return {str(k): np.asarray(v) for k, v in data.items() if isinstance(v, np.ndarray)}


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """torchvision/timm state dict from .npz, .safetensors or .pth -> {key: float32 array}."""
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if path.endswith((".pth", ".pt")):
    try:
      import torch
    except ImportError:
      raise ImportError(f"{path}: reading .pth needs torch; convert it to .safetensors or "
                        ".npz elsewhere, or `pip install torch`") from None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    return {k: v.numpy() for k, v in sd.items() if hasattr(v, "numpy")}
  raise ValueError(f"{path}: unknown weight file type (expected .npz, .safetensors, .pth)")


# --------------------------------------------------------------------------------------------
# Naming: our ResNet's conv+norm units, named the way each source names them.


def resnet_units(backbone) -> Iterator[Tuple[object, str, str]]:
  """Yields (ConvNorm unit, torchvision conv prefix, torchvision norm prefix)."""
  yield backbone.stem, "conv1", "bn1"
  for s, blocks in enumerate(backbone.stages):
    for i, block in enumerate(blocks):
      p = f"layer{s + 1}.{i}"
      for k in (1, 2, 3):
        yield getattr(block, f"conv{k}"), f"{p}.conv{k}", f"{p}.bn{k}"
      if block.shortcut is not None:
        yield block.shortcut, f"{p}.downsample.0", f"{p}.downsample.1"


def detectron_name(torch_prefix: str, norm_kind: str) -> str:
  """Detectron blob prefix for a torchvision conv or norm prefix ('bn' or 'gn' suffixes)."""
  if torch_prefix == "conv1":
    return "conv1"
  if torch_prefix == "bn1":
    return "res_conv1_bn" if norm_kind == "bn" else "conv1_gn"
  layer, block, part = torch_prefix.split(".", 2)
  base = f"res{int(layer[5:]) + 1}_{block}"
  if part.startswith("downsample"):
    branch = "branch1"
    is_norm = part.endswith(".1")
  else:
    branch = "branch2" + "abc"[int(part[-1]) - 1]
    is_norm = part.startswith("bn")
  return f"{base}_{branch}_{norm_kind}" if is_norm else f"{base}_{branch}"


def _set(var, value, name):
  value = np.asarray(value, np.float32)
  if tuple(var.shape) != value.shape:
    raise ValueError(f"{name}: shape {value.shape} does not fit {var.name} {tuple(var.shape)}")
  var.assign(value)


def assign_torchvision(backbone, sd: Dict[str, np.ndarray]):
  """Loads a torchvision/timm ResNet state dict; returns the keys it did not use."""
  used = set()
  for unit, conv, norm in resnet_units(backbone):
    _set(unit.conv.kernel, _take(sd, f"{conv}.weight", used).transpose(2, 3, 1, 0), conv)
    layer = unit.norm
    _set(layer.gamma, _take(sd, f"{norm}.weight", used), norm)
    _set(layer.beta, _take(sd, f"{norm}.bias", used), norm)
    if hasattr(layer, "moving_mean"):
      _set(layer.moving_mean, _take(sd, f"{norm}.running_mean", used), norm)
      _set(layer.moving_variance, _take(sd, f"{norm}.running_var", used), norm)
  return sorted(
      k for k in sd
      if k not in used and not k.startswith("fc.") and not k.endswith("num_batches_tracked"))


def assign_detectron(backbone, blobs: Dict[str, np.ndarray]):
  """Loads Detectron blobs (GN `_gn_s/_gn_b`, or folded BN `_bn_s/_bn_b`); returns unused."""
  norm_kind = "gn" if any(k.endswith("_gn_s") for k in blobs) else "bn"
  used = set()
  for unit, conv, norm in resnet_units(backbone):
    c = detectron_name(conv, norm_kind)
    n = detectron_name(norm, norm_kind)
    _set(unit.conv.kernel, _take(blobs, f"{c}_w", used).transpose(2, 3, 1, 0), c)
    layer = unit.norm
    scale, bias = _take(blobs, f"{n}_s", used), _take(blobs, f"{n}_b", used)
    _set(layer.gamma, scale, n)
    _set(layer.beta, bias, n)
    if hasattr(layer, "moving_mean"):
      if norm_kind != "bn":
        raise ValueError("GN weights cannot be loaded into a BN backbone")
      _set(layer.moving_mean, np.zeros_like(scale), n)
      _set(layer.moving_variance, np.full_like(scale, 1.0 - BN_EPSILON), n)
  ignored = ("conv1_b", "fc1000_w", "fc1000_b", "pred_w", "pred_b")
  return sorted(
      k for k in blobs if k not in used and k not in ignored and not k.endswith("_momentum"))


def _take(d, key, used):
  if key not in d:
    raise KeyError(key)
  used.add(key)
  return d[key]


# --------------------------------------------------------------------------------------------
# VGG-16 (Faster R-CNN): conv body plus fc6/fc7, which the original Faster R-CNN fine-tunes
# from ImageNet as its RoI head.

# Indices of the 13 convs in torchvision's `vgg16().features` (ReLUs and pools in between).
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_FC = {"fc6": ("classifier.0", 0), "fc7": ("classifier.3", 1)}  # name: (torch, box_head fc)


def vgg16_units(backbone) -> Iterator[Tuple[object, str, str]]:
  """Yields (Conv2D, torchvision prefix 'features.N', Detectron prefix 'convB_I')."""
  convs = [(conv, f"conv{b + 1}_{i + 1}")
           for b, block in enumerate(backbone.blocks)
           for i, conv in enumerate(block)]
  for (conv, name), index in zip(convs, TORCHVISION_VGG16_CONVS):
    yield conv, f"features.{index}", name


def fc6_kernel(weight, fc_in_hwc):
  """[out, C*7*7] (torch/Caffe2 flatten CHW) -> [7*7*C, out] for our NHWC flatten."""
  h, w, c = fc_in_hwc
  return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def assign_vgg16(backbone, box_head, weights: Dict[str, np.ndarray], layout: str):
  """Loads VGG-16 conv1_1..conv5_3 and fc6/fc7 from a torchvision state dict
  (`layout="torchvision"`) or Detectron blobs (`"detectron"`); returns the unused names.

  `box_head` is the 2fc head on 7x7 RoI features of conv5_3 (its fc1/fc2 are fc6/fc7).
  """
  used = set()
  w_key = (lambda p: f"{p}.weight") if layout == "torchvision" else (lambda p: f"{p}_w")
  b_key = (lambda p: f"{p}.bias") if layout == "torchvision" else (lambda p: f"{p}_b")
  for conv, torch_prefix, detectron_prefix in vgg16_units(backbone):
    p = torch_prefix if layout == "torchvision" else detectron_prefix
    _set(conv.kernel, _take(weights, w_key(p), used).transpose(2, 3, 1, 0), p)
    _set(conv.bias, _take(weights, b_key(p), used), p)
  channels = backbone.out_channels[max(backbone.out_channels)]
  for name, (torch_prefix, fc_index) in VGG16_FC.items():
    p = torch_prefix if layout == "torchvision" else name
    dense = box_head.fcs[fc_index]
    weight = _take(weights, w_key(p), used)
    kernel = fc6_kernel(weight, (7, 7, channels)) if name == "fc6" else weight.T
    _set(dense.kernel, kernel, p)
    _set(dense.bias, _take(weights, b_key(p), used), p)
  ignored = ("classifier.6.", "fc8_", "pred_")  # the 1000-way ImageNet classifier
  return sorted(k for k in weights
                if k not in used and not k.startswith(ignored) and not k.endswith("_momentum"))
