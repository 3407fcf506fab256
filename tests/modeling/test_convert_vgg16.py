"""VGG-16 weight import (torchvision npz/safetensors, Detectron pkl) for the Faster R-CNN
presets, checked against a numpy re-implementation of torchvision's VGG-16 (NCHW, OIHW)."""

import pickle

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from rethink_tf.checkpoint import convert_weights, weight_import
from rethink_tf.checkpoint import init as init_lib
from rethink_tf.modeling.build import build_model

WIDTH = 0.125  # channels 8, 16, 32, 64, 64: the real layout, narrower
FC_DIM = 32
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def torchvision_state_dict(seed=0):
  """Random VGG-16 weights under torchvision's names, including the 1000-way classifier."""
  rng = np.random.default_rng(seed)
  sd, cin = {}, 3
  convs = iter(weight_import.TORCHVISION_VGG16_CONVS)
  for channels, count in BLOCKS:
    for _ in range(count):
      c = int(channels * WIDTH)
      i = next(convs)
      sd[f"features.{i}.weight"] = rng.normal(0, np.sqrt(2 / (9 * cin)), (c, cin, 3, 3))
      sd[f"features.{i}.bias"] = rng.normal(0, 0.1, c)
      cin = c
  sd["classifier.0.weight"] = rng.normal(0, np.sqrt(1 / (cin * 49)), (FC_DIM, cin * 49))
  sd["classifier.0.bias"] = rng.normal(0, 0.1, FC_DIM)
  sd["classifier.3.weight"] = rng.normal(0, np.sqrt(1 / FC_DIM), (FC_DIM, FC_DIM))
  sd["classifier.3.bias"] = rng.normal(0, 0.1, FC_DIM)
  sd["classifier.6.weight"] = rng.normal(0, 0.1, (10, FC_DIM))
  sd["classifier.6.bias"] = rng.normal(0, 0.1, 10)
  return {k: v.astype(np.float32) for k, v in sd.items()}


def detectron_blobs(sd):
  names = [f"conv{b + 1}_{i + 1}" for b, (_, n) in enumerate(BLOCKS) for i in range(n)]
  blobs = {}
  for name, idx in zip(names, weight_import.TORCHVISION_VGG16_CONVS):
    blobs[f"{name}_w"] = sd[f"features.{idx}.weight"]
    blobs[f"{name}_b"] = sd[f"features.{idx}.bias"]
  for fc, idx in (("fc6", 0), ("fc7", 3), ("fc8", 6)):
    blobs[f"{fc}_w"] = sd[f"classifier.{idx}.weight"]
    blobs[f"{fc}_b"] = sd[f"classifier.{idx}.bias"]
  return blobs


def reference_conv5(sd, x_nchw):
  """torchvision VGG-16 features[:30] (no pool5) in float64 numpy."""
  x = x_nchw.astype(np.float64)
  convs = iter(weight_import.TORCHVISION_VGG16_CONVS)
  for b, (_, count) in enumerate(BLOCKS):
    for _ in range(count):
      i = next(convs)
      w, bias = sd[f"features.{i}.weight"], sd[f"features.{i}.bias"]
      n, c, h, wd = x.shape
      p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
      cols = np.stack([p[:, :, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], 2)
      x = np.einsum("nckhw,ock->nohw", cols, w.reshape(w.shape[0], c, 9)) + bias[None, :, None,
                                                                                 None]
      x = np.maximum(x, 0)
    if b < len(BLOCKS) - 1:
      n, c, h, wd = x.shape
      x = x.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
  return x


def reference_fc7(sd, conv5_nchw):
  flat = conv5_nchw.reshape(conv5_nchw.shape[0], -1)  # torch flattens C, H, W
  fc6 = np.maximum(flat @ sd["classifier.0.weight"].T + sd["classifier.0.bias"], 0)
  return np.maximum(fc6 @ sd["classifier.3.weight"].T + sd["classifier.3.bias"], 0)


@pytest.mark.parametrize("layout", ["npz", "safetensors", "detectron_pkl"])
def test_vgg16_conversion_matches_reference(layout, tmp_path):
  sd = torchvision_state_dict()
  if layout == "npz":
    path, fmt = str(tmp_path / "vgg16.npz"), "torchvision"
    np.savez(path, **sd)
  elif layout == "safetensors":
    path, fmt = str(tmp_path / "vgg16.safetensors"), "torchvision"
    save_file(sd, path)
  else:
    path, fmt = str(tmp_path / "vgg16.pkl"), "detectron"
    with open(path, "wb") as f:
      pickle.dump({"blobs": detectron_blobs(sd)}, f, protocol=2)
  prefix = str(tmp_path / "ckpt" / "vgg16")
  backbone = convert_weights.convert(fmt,
                                     path,
                                     prefix,
                                     norm="None",
                                     arch="vgg16",
                                     width_multiplier=WIDTH,
                                     fc_dim=FC_DIM)
  x = np.random.default_rng(1).normal(0, 50, (2, 3, 112, 112)).astype(np.float32)
  ours = convert_weights.backbone_features(backbone, x.transpose(0, 2, 3, 1))["conv5_3"]
  ref = reference_conv5(sd, x)
  assert ours.shape == (2, 7, 7, int(512 * WIDTH))
  np.testing.assert_allclose(ours,
                             ref.transpose(0, 2, 3, 1),
                             rtol=1e-4,
                             atol=1e-4 * np.abs(ref).max())

  # The `pretrained` init mode restores conv body and fc6/fc7 into a Faster R-CNN.
  model = build_model(num_classes=5,
                      image_size=(64, 64),
                      backbone="vgg16",
                      use_fpn=False,
                      mask_on=False,
                      norm=None,
                      box_head_type="2fc",
                      head_fc_dim=FC_DIM,
                      width_multiplier=WIDTH,
                      anchor_size=2.0,
                      anchor_scales=(1.0, 2.0))
  model.detect(tf.zeros([1, 64, 64, 3]), tf.constant([[64.0, 64.0]]))
  init_lib.restore_pretrained(model, prefix)
  fc7 = model.roi_heads.box_head(tf.constant(ours[:, None]), training=False).numpy()[:, 0]
  np.testing.assert_allclose(fc7, reference_fc7(sd, ref), rtol=1e-4, atol=1e-4 * np.abs(fc7).max())
  convention = init_lib.input_convention(prefix)
  assert convention["channel_order"] == ("RGB" if fmt == "torchvision" else "BGR")


def test_vgg16_missing_and_extra_weights_are_named(tmp_path):
  sd = torchvision_state_dict()
  missing = dict(sd)
  del missing["features.28.bias"]
  path = str(tmp_path / "missing.npz")
  np.savez(path, **missing)
  with pytest.raises(convert_weights.ConversionError, match="features.28.bias"):
    convert_weights.convert("torchvision",
                            path,
                            str(tmp_path / "a"),
                            norm="None",
                            arch="vgg16",
                            width_multiplier=WIDTH,
                            fc_dim=FC_DIM)
  extra = dict(sd, **{"features.30.weight": np.zeros(3, np.float32)})
  path = str(tmp_path / "extra.npz")
  np.savez(path, **extra)
  with pytest.raises(convert_weights.ConversionError, match="features.30.weight"):
    convert_weights.convert("torchvision",
                            path,
                            str(tmp_path / "b"),
                            norm="None",
                            arch="vgg16",
                            width_multiplier=WIDTH,
                            fc_dim=FC_DIM)
  with pytest.raises(convert_weights.ConversionError, match="no normalization"):
    convert_weights.convert("torchvision", path, str(tmp_path / "c"), norm="GN", arch="vgg16")
