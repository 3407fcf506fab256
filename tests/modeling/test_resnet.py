"""Backbone and FPN: shapes, ResNeXt groups, freeze_at, init."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.modeling.backbone.resnet import ResNet
from rethink_tf.modeling.fpn import FPN


def test_resnet50_parameter_count_equals_torchvision():
  # torchvision resnet50: 25,557,032 parameters, of which fc holds 2048*1000 + 1000.
  net = ResNet(depth=50, norm="BN")
  net(tf.zeros([1, 64, 64, 3]))
  params = sum(np.prod(v.shape) for v in net.variables if "moving_" not in v.name)
  assert params == 25_557_032 - 2_049_000


def test_resnext_groups_and_output_shapes():
  net = ResNet(depth=50,
               groups=32,
               width_per_group=4,
               norm="GN",
               width_multiplier=0.25,
               block_counts=(1, 1, 1, 1),
               gn_num_groups=8)
  feats = net(tf.zeros([2, 64, 96, 3]))
  assert feats[1].shape == (2, 16, 24, 16)
  assert [feats[l].shape for l in (2, 3, 4, 5)] == [(2, 16, 24, 64), (2, 8, 12, 128),
                                                    (2, 4, 6, 256), (2, 2, 3, 512)]
  conv2 = net.stages[0][0].conv2.conv
  assert conv2.groups == 32 and conv2.kernel.shape == (3, 3, 1, 32)


def test_freeze_at_freezes_stem_and_res2():
  net = ResNet(depth=50,
               norm="FrozenBN",
               freeze_at=2,
               width_multiplier=0.25,
               block_counts=(1, 1, 1, 1))
  net(tf.zeros([1, 64, 64, 3]))
  trainable = {v.name for v in net.trainable_variables}
  assert not any("stem" in n or "res2_" in n for n in trainable)
  assert any("res3_" in n for n in trainable)


def test_msra_fan_out_init_for_scratch():
  net = ResNet(depth=50, norm="GN", width_multiplier=1.0, block_counts=(1, 1, 1, 1))
  net(tf.zeros([1, 64, 64, 3]))
  k = net.stages[2][0].conv2.conv.kernel.numpy()  # 3x3, 256 -> 256
  fan_out = k.shape[0] * k.shape[1] * k.shape[3]
  assert abs(k.std() - np.sqrt(2.0 / fan_out)) < 0.05 * np.sqrt(2.0 / fan_out)
  gammas = [v.numpy() for v in net.variables if v.name.endswith("gamma:0")]
  assert all((g == 1.0).all() for g in gammas)  # no zero-init gamma


def test_fpn_levels_and_channels():
  feats = {l: tf.zeros([1, 128 // 2**l, 128 // 2**l, 8 * 2**l]) for l in (2, 3, 4, 5)}
  out = FPN(32, norm="GN", gn_num_groups=8)(feats)
  assert sorted(out) == [2, 3, 4, 5, 6]
  assert [out[l].shape[1] for l in sorted(out)] == [32, 16, 8, 4, 2]
  assert all(out[l].shape[-1] == 32 for l in out)


def test_unknown_depth_is_an_error():
  with pytest.raises(ValueError, match="depth 34"):
    ResNet(depth=34)


def test_stride_in_1x1_layout():
  v1 = ResNet(depth=50,
              norm="GN",
              width_multiplier=0.25,
              block_counts=(1, 1, 1, 1),
              gn_num_groups=8,
              stride_in_1x1=True)
  feats = v1(tf.zeros([1, 64, 64, 3]))
  block = v1.stages[1][0]
  assert block.conv1.strides == 2 and block.conv2.strides == 1
  assert feats[3].shape == (1, 8, 8, 128)
  v15 = ResNet(depth=50,
               norm="GN",
               width_multiplier=0.25,
               block_counts=(1, 1, 1, 1),
               gn_num_groups=8)
  assert v15.stages[1][0].conv1.strides == 1 and v15.stages[1][0].conv2.strides == 2
