"""ImageNet weight import: torchvision npz/safetensors and Detectron pkl -> our ResNet-50,
checked against PyTorch's C1-C5 for the fixture weights (BN and GN).

Matching PyTorch's outputs within 1e-4 relative also shows that our ResNet-50 is torchvision's
(v1.5: stride in the 3x3, symmetric padding, eps 1e-5, GN of 32 consecutive-channel groups)."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from backbone_recipe import ROOT, assert_features_match, recipe
from safetensors.numpy import save_file

from rethink_tf.checkpoint import convert_weights, weight_import
from rethink_tf.checkpoint.init import input_convention

from conftest import REPO_ROOT


def _features(backbone, ref):
  return convert_weights.backbone_features(backbone, ref["input_nchw"].transpose(0, 2, 3, 1))


def _detectron_blobs(variant):
  """Detectron-style blobs from the recipe, named by the fixture's own mapping json."""
  w, _ = recipe(variant)
  names = json.load(open(os.path.join(ROOT, f"detectron_names_{variant}.json")))
  blobs = {}
  for key, value in w.items():
    blob = names["mapping"].get(key)
    if blob is not None and (variant == "gn" or value.ndim == 4):
      blobs[blob] = value
  if variant == "bn":  # fold BN into AffineChannel scale/bias, eps 1e-5
    for g in names["bn_fold"]["groups"]:
      s = w[g["gamma"]].astype(np.float64) / np.sqrt(w[g["running_var"]].astype(np.float64) + 1e-5)
      blobs[g["scale_blob"]] = s.astype(np.float32)
      blobs[g["bias_blob"]] = (w[g["beta"]] - w[g["running_mean"]] * s).astype(np.float32)
  blobs["conv1_b"] = np.zeros(64, np.float32)  # present in the real pkls, ignored
  blobs["fc1000_w" if variant == "bn" else "pred_w"] = np.zeros((10, 2048), np.float32)
  return blobs


@pytest.mark.parametrize("variant,norm", [("bn", "FrozenBN"), ("gn", "GN")])
@pytest.mark.parametrize("ext", ["npz", "safetensors"])
def test_torchvision_layout(tmp_path, variant, norm, ext):
  w, ref = recipe(variant)
  path = str(tmp_path / f"w.{ext}")
  w = {**w, "fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32)}
  np.savez(path, **w) if ext == "npz" else save_file(w, path)
  prefix = str(tmp_path / "ckpt")
  backbone = convert_weights.convert("torchvision", path, prefix, norm=norm)
  assert_features_match(_features(backbone, ref), ref)
  conv = input_convention(prefix)
  assert conv["channel_order"] == "RGB" and conv["pixel_std"] == [58.395, 57.12, 57.375]


@pytest.mark.parametrize("variant,norm", [("bn", "FrozenBN"), ("gn", "GN")])
def test_detectron_pkl(tmp_path, variant, norm):
  _, ref = recipe(variant)
  path = str(tmp_path / "R-50.pkl")
  with open(path, "wb") as f:
    pickle.dump({"blobs": _detectron_blobs(variant)}, f, protocol=2)
  prefix = str(tmp_path / "ckpt")
  backbone = convert_weights.convert("detectron", path, prefix, norm=norm)
  assert_features_match(_features(backbone, ref), ref)
  conv = input_convention(prefix)
  assert conv["channel_order"] == "BGR" and conv["pixel_std"] == [1.0, 1.0, 1.0]


def test_our_detectron_names_equal_the_fixture_mapping():
  for variant in ("bn", "gn"):
    mapping = json.load(open(os.path.join(ROOT, f"detectron_names_{variant}.json")))["mapping"]
    for key, blob in mapping.items():
      if blob is None:
        continue
      prefix, suffix = key.rsplit(".", 1)
      ours = weight_import.detectron_name(prefix, variant)
      expected = blob.rsplit("_", 1)[0]
      assert ours == expected, (key, ours, blob)


def test_code_in_a_pickle_is_refused(tmp_path):

  class Evil:

    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"blobs": {"conv1_w": Evil()}}))
  with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
    weight_import.load_pickle_blobs(str(path))


def test_missing_and_unused_weights_are_named(tmp_path):
  w, _ = recipe("gn")
  missing = {k: v for k, v in w.items() if k != "layer3.2.conv2.weight"}
  np.savez(tmp_path / "missing.npz", **missing)
  with pytest.raises(convert_weights.ConversionError, match="layer3.2.conv2.weight"):
    convert_weights.convert("torchvision", str(tmp_path / "missing.npz"), str(tmp_path / "a"))
  np.savez(tmp_path / "extra.npz", **w, **{"layer5.0.conv1.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert_weights.ConversionError, match="layer5.0.conv1.weight"):
    convert_weights.convert("torchvision", str(tmp_path / "extra.npz"), str(tmp_path / "b"))
  with pytest.raises(convert_weights.ConversionError, match="stride_in_1x1"):
    convert_weights.convert("keras", "resnet50.h5", str(tmp_path / "c"))


def test_cli_writes_checkpoint_and_check_features(tmp_path):
  w, ref = recipe("gn")
  np.savez(tmp_path / "w.npz", **w)
  np.save(tmp_path / "x.npy", ref["input_nchw"].transpose(0, 2, 3, 1))
  out = subprocess.run([
      sys.executable, "-m", "rethink_tf.checkpoint.convert_weights", "--format=torchvision",
      f"--input={tmp_path / 'w.npz'}", f"--output={tmp_path / 'ckpt'}", "--depth=50", "--norm=GN",
      f"--check_input={tmp_path / 'x.npy'}", f"--check_output={tmp_path / 'feats.npz'}"
  ],
                       cwd=REPO_ROOT,
                       capture_output=True,
                       text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  feats = np.load(tmp_path / "feats.npz")
  assert sorted(feats.files) == ["c1_pool", "c2", "c3", "c4", "c5"]
  assert_features_match({k: feats[k] for k in feats.files}, ref)
  assert os.path.exists(str(tmp_path / "ckpt") + ".index")
