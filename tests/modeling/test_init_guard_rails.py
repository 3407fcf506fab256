"""Every init-mode guard rail raises with a message that says why; backbone restore checks."""

import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.checkpoint import init as init_lib
from rethink_tf.checkpoint.init import InitError, InitMode
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.detector import build_detector
from rethink_tf.modeling.backbone.resnet import ResNet


def test_scratch_with_frozen_bn_is_refused():
  with pytest.raises(InitError, match="FrozenBN"):
    init_lib.validate(InitMode.SCRATCH, "FrozenBN", 0, None)


def test_scratch_with_frozen_stages_is_refused():
  with pytest.raises(InitError, match="freeze_at=2"):
    init_lib.validate(InitMode.SCRATCH, "GN", 2, None)


def test_pretrained_without_checkpoint_is_refused():
  for empty in (None, ""):
    with pytest.raises(InitError, match="needs a backbone checkpoint"):
      init_lib.validate(InitMode.PRETRAINED, "GN", 0, empty)


def test_scratch_with_checkpoint_is_refused():
  with pytest.raises(InitError, match="use init mode 'pretrained'"):
    init_lib.validate(InitMode.SCRATCH, "GN", 0, "/some/ckpt")


def test_unknown_mode_is_refused():
  with pytest.raises(InitError, match="not one of"):
    init_lib.init_config(mode="imagenet")


def test_valid_combinations_pass():
  """The paper's recipes validate: they return normally (an InitError would fail the test)."""
  for mode, norm, freeze_at, checkpoint in [(InitMode.SCRATCH, "GN", 0, None),
                                            (InitMode.SCRATCH, "SyncBN", 0, None),
                                            (InitMode.PRETRAINED, "FrozenBN", 2, "/ckpt")]:
    assert init_lib.validate(mode, norm, freeze_at, checkpoint) is None


@pytest.mark.parametrize("files,params,match", [
    (["gin_configs/testing/tiny.gin"], ["build_model.norm='FrozenBN'"], "FrozenBN"),
    (["gin_configs/testing/tiny.gin"], ["build_model.freeze_at=1"], "freeze_at=1"),
    (["gin_configs/testing/tiny.gin"], ["init_config.mode='pretrained'"], "needs a backbone"),
])
def test_guard_rails_fire_from_gin_before_training(files, params, match):
  config.parse_gin(files, params)
  with pytest.raises(InitError, match=match):
    build_detector(InputConfig(padded_size=(64, 64)), training=True)


def _tiny_backbone(**kw):
  net = ResNet(depth=50,
               norm="GN",
               width_multiplier=0.25,
               block_counts=(1, 1, 1, 1),
               gn_num_groups=8,
               name="backbone",
               **kw)
  net(tf.zeros([1, 64, 64, 3]))
  return net


def test_restore_backbone_round_trip_and_mismatch(tmp_path):
  src = _tiny_backbone()
  prefix = init_lib.save_backbone(src, str(tmp_path / "bb"))
  dst = _tiny_backbone()
  init_lib.restore_backbone(dst, prefix)
  for a, b in zip(src.variables, dst.variables):
    assert (a.numpy() == b.numpy()).all()
  other = ResNet(depth=50,
                 norm="GN",
                 width_multiplier=0.25,
                 block_counts=(1, 1, 2, 1),
                 gn_num_groups=8,
                 name="backbone")
  other(tf.zeros([1, 64, 64, 3]))
  with pytest.raises(InitError, match="does not match"):
    init_lib.restore_backbone(other, prefix)


def test_pretrained_mode_restores_the_backbone_before_step_zero(tmp_path):
  """init/pretrained.gin + a backbone checkpoint: the trainer starts from those weights."""
  from rethink_tf.training import distribute
  from rethink_tf.training.task import detection_trainer
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  donor = detection_trainer(str(tmp_path / "donor"), distribute.get_strategy("one_device"))
  prefix = init_lib.save_backbone(donor.model.backbone, str(tmp_path / "backbone"))
  # Another seed: without the restore, the backbone would differ from the donor's.
  config.parse_gin(
      ["gin_configs/testing/tiny.gin"],
      ["init_config.mode='pretrained'", f"init_config.checkpoint='{prefix}'", "TrainConfig.seed=1"])
  t = detection_trainer(str(tmp_path / "run"), distribute.get_strategy("one_device"))
  assert t.restore_or_initialize() == 0
  for a, b in zip(donor.model.backbone.variables, t.model.backbone.variables):
    assert (a.numpy() == b.numpy()).all()
  # The heads were not part of the checkpoint: they keep their own random init.
  assert not (donor.model.roi_heads.box_head.variables[0].numpy()
              == t.model.roi_heads.box_head.variables[0].numpy()).all()


def test_pretrained_input_convention_and_layout_are_enforced(tmp_path):
  """A converted checkpoint's pixel convention reaches the pipeline; a layout mismatch fails."""
  import json

  from rethink_tf.training import distribute
  from rethink_tf.training.task import detection_trainer
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  donor = detection_trainer(str(tmp_path / "donor"), distribute.get_strategy("one_device"))
  prefix = init_lib.save_backbone(donor.model.backbone, str(tmp_path / "backbone"))
  meta = {
      "channel_order": "BGR", "pixel_mean": [102.9801, 115.9465, 122.7717],
      "pixel_std": [1.0, 1.0, 1.0], "stride_in_1x1": False
  }
  with open(prefix + ".json", "w") as f:
    json.dump(meta, f)
  pretrained = ["init_config.mode='pretrained'", f"init_config.checkpoint='{prefix}'"]
  config.parse_gin(["gin_configs/testing/tiny.gin"], pretrained)
  t = detection_trainer(str(tmp_path / "run"), distribute.get_strategy("one_device"))
  assert t.task.input_cfg.channel_order == "BGR"
  assert t.task.input_cfg.pixel_mean == tuple(meta["pixel_mean"])
  assert t.task.input_cfg.pixel_std == (1.0, 1.0, 1.0)
  config.parse_gin(["gin_configs/testing/tiny.gin"],
                   pretrained + ["build_model.stride_in_1x1=True"])
  with pytest.raises(InitError, match="stride_in_1x1"):
    detection_trainer(str(tmp_path / "run2"), distribute.get_strategy("one_device"))


def test_training_with_detectron_box_convention_is_refused():
  """Detectron's "+1" boxes exist for converted models at inference; training encodes
  continuous boxes, so a run binding it stops before building anything else."""
  from rethink_tf.errors import ConfigError
  config.parse_gin(["gin_configs/testing/tiny.gin"], ["build_model.box_plus_one = True"])
  with pytest.raises(ConfigError, match="box_plus_one"):
    build_detector(InputConfig(padded_size=(64, 64)), training=True)
