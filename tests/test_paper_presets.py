"""The paper presets: schedules equal the paper's rule, headers state what each reproduces, and
every preset family builds at tiny input size and trains one step."""

import glob
import os
import re

import gin
import numpy as np
import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.checkpoint import init as init_lib
from rethink_tf.training import distribute
from rethink_tf.training.schedules import nx_schedule
from rethink_tf.training.task import detection_trainer
from rethink_tf.training.train_config import TrainConfig

from conftest import REPO_ROOT

PRESETS = sorted(
    os.path.relpath(p, REPO_ROOT)
    for p in glob.glob(os.path.join(REPO_ROOT, "gin_configs", "paper", "*.gin")))
NAMES = [os.path.basename(p)[:-4] for p in PRESETS]

# (total iterations, LR decay steps, warmup iterations, base LR, decay factor), written out from
# the paper's rule: Nx = N * 90k at batch 16 with drops in the last 60k and 20k; at batch 64 a
# quarter of the iterations and 4x the LR (detectron2's scratch_mask_rcnn_R_50_FPN_9x_gn).
SCHEDULES = {
    "2x": (180_000, (120_000, 160_000), 500, 0.02, 0.1),
    "3x": (270_000, (210_000, 250_000), 500, 0.02, 0.1),
    "4x": (360_000, (300_000, 340_000), 500, 0.02, 0.1),
    "5x": (450_000, (390_000, 430_000), 500, 0.02, 0.1),
    "6x": (540_000, (480_000, 520_000), 500, 0.02, 0.1),
    "9x_batch16": (810_000, (750_000, 790_000), 500, 0.02, 0.1),
    "9x_batch64": (202_500, (187_500, 197_500), 125, 0.08, 0.1),
    "11x": (990_000, (930_000, 970_000), 500, 0.02, 0.1),
    "less_data_6x": (540_000, (480_000, 520_000), 500, 0.04, 0.02),
}


def expected_schedule(name):
  if name.endswith("_images"):
    return SCHEDULES["less_data_6x"]
  if "_9x" in name:
    return SCHEDULES["9x_batch64" if "_9x_aug" in name else "9x_batch16"]
  return SCHEDULES[re.search(r"_(\d+x)", name).group(1)]


# Box AP the paper reports, by preset (the header must quote it).
PAPER_AP = {
    "r50_fpn_gn_scratch_2x": "36.8",
    "r50_fpn_gn_pretrained_2x": "40.3",
    "r50_fpn_gn_scratch_3x": "39.5",
    "r50_fpn_gn_pretrained_3x": "40.8",
    "r50_fpn_gn_scratch_6x": "41.3",
    "r50_fpn_gn_pretrained_6x": "41.1",
    "r101_fpn_gn_scratch_6x": "42.7",
    "r101_fpn_gn_pretrained_6x": "42.2",
    "vgg16_faster_rcnn_scratch_11x": "35.2",
    "vgg16_faster_rcnn_pretrained_9x": "35.6",
    "x152_32x8d_fpn_gn_scratch_9x_aug": "46.4",
    "x152_32x8d_fpn_gn_scratch_9x_aug_cascade": "48.6",
    "x152_32x8d_fpn_gn_scratch_9x_aug_cascade_tta": "50.9",
    "r50_fpn_gn_keypoints_scratch_2x": "65.6",
    "r50_fpn_gn_keypoints_pretrained_2x": "65.5",
}


def _parse(path, params=()):
  gin.clear_config()
  if "_pretrained" in path and not any("init_config.checkpoint" in p for p in params):
    params = [*params, "init_config.checkpoint = '/backbones/converted'"]  # %gin.REQUIRED
  config.parse_gin([path], list(params))


def test_every_experiment_of_the_paper_has_a_preset():
  want = ([
      f"r{d}_fpn_gn_{i}_{x}x" for d in (50, 101) for i in ("scratch", "pretrained")
      for x in (2, 3, 4, 5, 6)
  ] + [f"r50_fpn_syncbn_{i}_{x}x" for i in ("scratch", "pretrained") for x in (2, 3, 6)] + [
      "r50_fpn_gn_scratch_9x_aug", "r50_fpn_gn_pretrained_6x_aug", "vgg16_faster_rcnn_scratch_11x",
      "vgg16_faster_rcnn_pretrained_9x", "x152_32x8d_fpn_gn_scratch_9x_aug",
      "x152_32x8d_fpn_gn_scratch_9x_aug_cascade", "x152_32x8d_fpn_gn_scratch_9x_aug_cascade_tta"
  ] + [f"r50_fpn_gn_keypoints_{i}_2x" for i in ("scratch", "pretrained")] + [
      f"r50_fpn_gn_{i}_{n}_images" for i in ("scratch", "pretrained")
      for n in ("35k", "10k", "3p5k", "1k")
  ])
  assert not set(want) - set(NAMES), sorted(set(want) - set(NAMES))


@pytest.mark.parametrize("path", PRESETS, ids=NAMES)
def test_schedule_is_the_papers(path):
  name = os.path.basename(path)[:-4]
  _parse(path)
  s = nx_schedule(global_batch_size=TrainConfig().global_batch_size)
  total, bounds, warmup, lr, decay = expected_schedule(name)
  assert (s.total_steps, s.boundaries, s.warmup_steps) == (total, bounds, warmup)
  assert s.base_lr == pytest.approx(lr) and s.decay_factor == pytest.approx(decay)
  assert s.warmup_factor == pytest.approx(1 / 3)
  # Warmup is Detectron's 500 iterations at batch 16, in images: the same at every batch.
  assert s.warmup_steps * TrainConfig().global_batch_size == 500 * 16
  # The header states the same schedule.
  text = open(os.path.join(REPO_ROOT, path)).read()
  k = lambda v: f"{v / 1000:g}k"
  line = re.search(r"^# Schedule: (.*)$", text, re.M).group(1)
  assert line.startswith(f"{k(total)} iterations at global batch "
                         f"{TrainConfig().global_batch_size}, LR {lr:g}, x{decay:g} at "
                         f"{k(bounds[0])} and {k(bounds[1])}, warmup {warmup}"), line
  gin.clear_config()


@pytest.mark.parametrize("path", PRESETS, ids=NAMES)
def test_header_names_figure_and_paper_result(path):
  name = os.path.basename(path)[:-4]
  text = open(os.path.join(REPO_ROOT, path)).read()
  assert text.startswith(f"# COMMAND: python -m rethink_tf.train --gin_file={path} ")
  assert re.search(r"^# Reproduces: .*(Fig\.|Table|Section)", text, re.M)
  paper = re.search(r"^# Paper: (.*)$", text, re.M).group(1)
  if name in PAPER_AP:
    assert paper.startswith(PAPER_AP[name]), paper
  if "_pretrained" in name:  # the command binds converted weights and says how to make them
    assert "init_config.checkpoint=" in text.splitlines()[0]
    assert re.search(r"^# Weights: python -m rethink_tf.checkpoint.convert_weights ", text, re.M)


@pytest.mark.parametrize("path", PRESETS, ids=NAMES)
def test_preset_binds_the_described_recipe(path):
  name = os.path.basename(path)[:-4]
  _parse(path)
  q = gin.query_parameter
  assert q("init_config.mode") == ("pretrained" if "_pretrained" in name else "scratch")
  norm = None if name.startswith("vgg16") else ("SyncBN" if "_syncbn_" in name else "GN")
  assert q("build_model.norm") == norm
  jitter = q("InputConfig.scale_jitter") if "InputConfig.scale_jitter" in gin.config_str() else None
  if "_aug" in name or name.startswith("vgg16"):
    assert tuple(jitter) == (640, 800)
  elif name.endswith("_images"):
    assert tuple(jitter) == (512, 800)
    tag = re.search(r"_(\w+)_images", name).group(1).split("_")[-1]
    assert f"/coco_{tag}/" in q("InputConfig.train_pattern")
  else:
    assert jitter is None
  keypoints = "_keypoints_" in name  # Fig. 6: Detectron's keypoint R-CNN on COCO persons
  assert q("build_model.num_keypoints") if keypoints else ("build_model.num_keypoints"
                                                           not in gin.config_str())
  if keypoints:
    from rethink_tf.data.keypoints import COCO_PERSON_KEYPOINTS
    assert q("build_model.num_keypoints") == 17 and q("build_model.mask_on") is False
    assert tuple(q("InputConfig.keypoint_names")) == COCO_PERSON_KEYPOINTS
    assert tuple(q("InputConfig.category_ids")) == (1,)
    assert "person_keypoints_val2017.json" in q("InputConfig.val_annotations")
  cascade = "_cascade" in name  # Table 3: cascade for the last 270k iterations at batch 16
  if cascade:
    assert tuple(q("build_model.cascade_ious")) == (0.5, 0.6, 0.7)
    total = nx_schedule(global_batch_size=TrainConfig().global_batch_size).total_steps
    start = total - 270_000 * 16 // TrainConfig().global_batch_size
    assert q("build_model.cascade_start_step") == start == 135_000
  else:
    assert "cascade" not in gin.config_str()
  if name.endswith("_tta"):  # detectron2's TEST.AUG scales around the 800 base scale
    assert sorted({800, *q("TestTimeAugmentation.scales")}) == list(range(400, 1201, 100))
    assert q("TestTimeAugmentation.flip") is True
  gin.clear_config()


# ---------------------------------------------------------------------------------------------
# One training step per preset family, at tiny input size on the synthetic data.

SMOKE = [
    "InputConfig.synthetic = @SyntheticDataset()",
    "InputConfig.train_pattern = ''",
    "InputConfig.val_pattern = ''",
    "InputConfig.val_annotations = ''",
    "InputConfig.category_ids = ()",
    "SyntheticDataset.num_train = 4",
    "SyntheticDataset.num_val = 2",
    "SyntheticDataset.image_size = 64",
    "SyntheticDataset.max_objects = 3",
    "InputConfig.short_side = 64",
    "InputConfig.max_long_side = 64",
    "InputConfig.padded_size = (64, 64)",
    "InputConfig.max_instances = 8",
    "InputConfig.mask_crop_size = 16",
    "InputConfig.shuffle_buffer = 4",
    "build_model.rpn_pre_nms_topk_train = 200",
    "build_model.rpn_post_nms_topk_train = 32",
    "build_model.rpn_pre_nms_topk_test = 100",
    "build_model.rpn_post_nms_topk_test = 16",
    "build_model.roi_samples_per_image = 16",
    "build_model.detections_per_image = 8",
    "TrainConfig.global_batch_size = 1",
    "TrainConfig.checkpoint_every_steps = 1000",
]

FAMILIES = {
    "r50_gn_scratch": "r50_fpn_gn_scratch_3x",
    "r101_gn_pretrained": "r101_fpn_gn_pretrained_6x",
    "syncbn_scratch": "r50_fpn_syncbn_scratch_6x",
    "enhanced_aug": "r50_fpn_gn_scratch_9x_aug",
    "less_data_pretrained": "r50_fpn_gn_pretrained_1k_images",
    "vgg16_scratch": "vgg16_faster_rcnn_scratch_11x",
    "vgg16_pretrained": "vgg16_faster_rcnn_pretrained_9x",
    # The X152 rows differ only by the cascade (and test-time) bindings: one step covers them.
    "x152_cascade_scratch": "x152_32x8d_fpn_gn_scratch_9x_aug_cascade",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_preset_family_trains_one_step(family, tmp_path):
  name = FAMILIES[family]
  pretrained = "_pretrained" in name
  ckpt = str(tmp_path / "backbone" / "ckpt")
  params = SMOKE + ([f"init_config.checkpoint = '{ckpt}'"] if pretrained else [])
  _parse(f"gin_configs/paper/{name}.gin", params)
  t = detection_trainer(str(tmp_path / "run"), distribute.get_strategy("one_device"))
  model = t.model
  if pretrained:  # a converted backbone on disk; the init mode must restore exactly it
    rng = np.random.default_rng(0)
    saved = [
        v.numpy() + rng.normal(0, 0.01, v.shape).astype(np.float32)
        for v in model.backbone.variables
    ]
    for v, s in zip(model.backbone.variables, saved):
      v.assign(s)
    init_lib.save_backbone(model.backbone, ckpt)
    for v in model.backbone.variables:
      v.assign(tf.zeros_like(v))
  assert t.restore_or_initialize() == 0
  if pretrained:
    for v, s in zip(model.backbone.variables, saved):
      np.testing.assert_array_equal(v.numpy(), s, err_msg=v.name)
  before = {v.ref(): v.numpy().copy() for v in model.trainable_variables}
  # The trainer's own step, run eagerly: tracing the compiled loop of a full-width model costs
  # ~35 s per family, and the compiled loop is covered by the tiny-config training tests.
  losses, applied = t.strategy.run(t.task.replica_step(), args=(next(iter(t.task.dataset())),))
  assert bool(applied)
  values = {k: float(v) for k, v in losses.items()}
  assert all(np.isfinite(v) for v in values.values()), values
  assert ("mask_loss" in values) == (model.roi_heads.branch("mask") is not None)
  assert int(t.optimizer.iterations.numpy()) == 1
  # Every trainable backbone/RPN/box variable moved (the mask head may see no foreground RoI
  # in one 64 px image, then only its kernels move, by weight decay).
  for layer in (model.backbone, model.rpn_head, model.roi_heads.box_head,
                model.roi_heads.box_predictor):
    for v in layer.trainable_variables:
      assert not np.array_equal(before[v.ref()], v.numpy()), v.name
  if name.startswith("vgg16"):
    assert model.fpn is None and model.roi_heads.branch(
        "mask") is None and model.backbone.norm is None
    frozen = [
        v for b in model.backbone.blocks[:model.backbone.freeze_at] for c in b for v in c.variables
    ]
    assert bool(frozen) == pretrained
    trainable = {v.ref() for v in model.trainable_variables}
    assert not any(v.ref() in trainable for v in frozen)
  gin.clear_config()
