"""Our ResNet-50 equals PyTorch's torchvision ResNet-50 (BN and GN(32)) on C1-C5.

Weights come from the numpy recipe of tests/testdata/backbone_ref/README.md (torchvision
layout); the references are PyTorch's outputs for them (computed in float64).
"""

import json
import os

import numpy as np
import pytest

from rethink_tf.modeling.resnet import ResNet

LEVELS = {"c1_pool": 1, "c2": 2, "c3": 3, "c4": 4, "c5": 5}


def make_weights(keys_json, seed):
  """The fixture recipe: {torchvision key: float32 array in torch layout}."""
  rng, out = np.random.default_rng(seed), {}
  for key, shape, kind in json.load(open(keys_json)):
    shape = tuple(shape)
    if kind == "conv":
      a = rng.standard_normal(shape, dtype=np.float64) * np.sqrt(
          2.0 / (shape[0] * shape[2] * shape[3]))
    elif kind == "gamma":
      a = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float64)
    elif kind in ("beta", "mean"):
      a = 0.1 * rng.standard_normal(shape, dtype=np.float64)
    else:  # var
      a = 1.0 + 0.2 * rng.random(shape, dtype=np.float64)
    out[key] = a.astype(np.float32)
  return out


def _load_torchvision_layout(net, w, with_stats):
  def set_unit(unit, conv, bn):
    unit.conv.kernel.assign(w[f"{conv}.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
    unit.norm.gamma.assign(w[f"{bn}.weight"])
    unit.norm.beta.assign(w[f"{bn}.bias"])
    if with_stats:
      unit.norm.moving_mean.assign(w[f"{bn}.running_mean"])
      unit.norm.moving_variance.assign(w[f"{bn}.running_var"])

  set_unit(net.stem, "conv1", "bn1")
  for s, blocks in enumerate(net.stages):
    for i, block in enumerate(blocks):
      p = f"layer{s + 1}.{i}"
      for k in (1, 2, 3):
        set_unit(getattr(block, f"conv{k}"), f"{p}.conv{k}", f"{p}.bn{k}")
      if block.shortcut is not None:
        set_unit(block.shortcut, f"{p}.downsample.0", f"{p}.downsample.1")


@pytest.mark.parametrize("variant,norm", [("bn", "FrozenBN"), ("gn", "GN")])
def test_resnet50_matches_pytorch(testdata, variant, norm):
  root = os.path.join(testdata, "backbone_ref")
  w = make_weights(os.path.join(root, f"resnet50_{variant}_keys.json"), 0)
  ref = np.load(os.path.join(root, f"resnet50_{variant}_seed0.npz"))
  x = ref["input_nchw"].transpose(0, 2, 3, 1)
  net = ResNet(depth=50, norm=norm)
  net(x)
  _load_torchvision_layout(net, w, with_stats=variant == "bn")
  out = net(x, training=False)
  for key, level in LEVELS.items():
    r = ref[key].transpose(0, 2, 3, 1).astype(np.float64)
    np.testing.assert_allclose(out[level].numpy().astype(np.float64), r, rtol=1e-4,
                               atol=1e-4 * np.abs(r).max(), err_msg=key)
