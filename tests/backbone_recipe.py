"""The backbone fixture recipe (tests/testdata/backbone_ref/README.md) and its checks."""

import json
import os

import numpy as np

from conftest import TESTDATA

ROOT = os.path.join(TESTDATA, "backbone_ref")
LEVELS = {"c1_pool": 1, "c2": 2, "c3": 3, "c4": 4, "c5": 5}


def make_weights(keys_json, seed):
  """The fixture recipe: {torchvision key: float32 array in torch layout}."""
  rng, out = np.random.default_rng(seed), {}
  for key, shape, kind in json.load(open(keys_json)):
    shape = tuple(shape)
    if kind == "conv":
      a = rng.standard_normal(shape, dtype=np.float64) * np.sqrt(2.0 /
                                                                 (shape[0] * shape[2] * shape[3]))
    elif kind == "gamma":
      a = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float64)
    elif kind in ("beta", "mean"):
      a = 0.1 * rng.standard_normal(shape, dtype=np.float64)
    else:  # var
      a = 1.0 + 0.2 * rng.random(shape, dtype=np.float64)
    out[key] = a.astype(np.float32)
  return out


def recipe(variant: str):
  """(torchvision-layout weights, reference npz) of ResNet-50 `variant` ('bn' or 'gn')."""
  w = make_weights(os.path.join(ROOT, f"resnet50_{variant}_keys.json"), 0)
  return w, np.load(os.path.join(ROOT, f"resnet50_{variant}_seed0.npz"))


def assert_features_match(features_by_key, ref, tol=1e-4):
  """Relative error <= tol with an atol scaled to each tensor (the fixture README's rule)."""
  for key in LEVELS:
    r = ref[key].transpose(0, 2, 3, 1).astype(np.float64)
    np.testing.assert_allclose(np.asarray(features_by_key[key], np.float64),
                               r,
                               rtol=tol,
                               atol=tol * np.abs(r).max(),
                               err_msg=key)
