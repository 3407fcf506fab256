"""model_summary of every paper preset equals the reference architecture, module by module.

The reference counts are derived here from the layer definitions of torchvision (backbones)
and Detectron/detectron2 (FPN, RPN, heads), independently of our modules; the backbone
formula is first checked against torchvision's published parameter counts.
"""

import glob
import json
import os
import subprocess
import sys

import gin
import pytest

from rethink_tf import config
from rethink_tf.tools.model_summary import build_and_summarize

from conftest import REPO_ROOT

# torchvision's published num_params (ImageNet classifiers, with their 1000-way fc).
TORCHVISION = {
    "resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "vgg16": 138_357_544
}
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
VGG16 = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def norm_params(c):
  return 2 * c  # BN/SyncBN/GN affine (BN moving statistics are buffers, not parameters)


def resnet_body(depth, groups=1, width_per_group=64):
  """torchvision ResNet/ResNeXt without the fc: stem, bottlenecks, projection shortcuts."""
  total = 3 * 64 * 49 + norm_params(64)
  cin, width, cout = 64, groups * width_per_group, 256
  for count in BLOCKS[depth]:
    for i in range(count):
      total += cin * width + norm_params(width)
      total += 9 * width * width // groups + norm_params(width)
      total += width * cout + norm_params(cout)
      if i == 0:
        total += cin * cout + norm_params(cout)
      cin = cout
    width, cout = width * 2, cout * 2
  return total


def vgg16_body():
  total, cin = 0, 3
  for c, n in VGG16:
    for _ in range(n):
      total += 9 * cin * c + c
      cin = c
  return total


def test_reference_backbone_formula_matches_torchvision():
  fc = 2048 * 1000 + 1000
  assert resnet_body(50) + fc == TORCHVISION["resnet50"]
  assert resnet_body(101) + fc == TORCHVISION["resnet101"]
  assert resnet_body(152) + fc == TORCHVISION["resnet152"]
  assert resnet_body(50, 32, 4) + fc == TORCHVISION["resnext50_32x4d"]
  assert resnet_body(101, 32, 8) + fc == TORCHVISION["resnext101_32x8d"]
  vgg_fc = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
  assert vgg16_body() + vgg_fc == TORCHVISION["vgg16"]


def mask_rcnn_fpn_reference(depth,
                            groups,
                            width_per_group,
                            num_classes=81,
                            c=256,
                            mask_on=True,
                            num_keypoints=0,
                            cascade_stages=1):
  """Detectron's Mask R-CNN FPN with norm in FPN and heads (GN or SyncBN): FPN laterals 1x1 and
  outputs 3x3 without bias on C2..C5, P6 by subsampling; RPN 3x3 conv + 1x1 objectness (3) and
  deltas (12) with bias; 4conv1fc box head (no conv bias) + fc 1024; predictor cls K and
  class-specific boxes 4K; mask head 4 convs + 2x2 deconv with bias, 1x1 predictor to K.
  Keypoint R-CNN (Detectron): 8 convs 3x3 512 with norm, no bias; a 4x4 deconv predictor to
  the keypoints with bias. Cascade R-CNN (detectron2): every stage a box head of the same
  shape and a class-agnostic predictor (cls K, boxes 4)."""
  fpn = sum(cin * c + norm_params(c) for cin in (256, 512, 1024, 2048))
  fpn += 4 * (9 * c * c + norm_params(c))
  rpn = (9 * c * c + c) + (c * 3 + 3) + (c * 12 + 12)
  box_head = 4 * (9 * c * c + norm_params(c)) + (c * 7 * 7 * 1024 + 1024)
  boxes = 4 if cascade_stages > 1 else 4 * num_classes
  box_pred = (1024 * num_classes + num_classes) + (1024 * boxes + boxes)
  mask_head = 4 * (9 * c * c + norm_params(c)) + (4 * c * c + c)
  mask_pred = c * num_classes + num_classes
  ref = dict(backbone=resnet_body(depth, groups, width_per_group),
             fpn=fpn,
             rpn=rpn,
             box_head=box_head,
             box_predictor=box_pred)
  if mask_on:
    ref.update(mask_head=mask_head, mask_predictor=mask_pred)
  for k in range(2, cascade_stages + 1):
    ref.update({f"box_head_stage{k}": box_head, f"box_predictor_stage{k}": box_pred})
  if num_keypoints:
    ref["keypoint_head"] = sum(9 * cin * 512 + norm_params(512) for cin in [c] + [512] * 7)
    ref["keypoint_predictor"] = 16 * 512 * num_keypoints + num_keypoints
  return ref


def faster_rcnn_vgg16_reference(num_classes=81, anchors=15):
  """Detectron's VGG-16 Faster R-CNN: conv body, single-level RPN on conv5 (512 channels,
  5 sizes x 3 ratios), fc6/fc7 head on 7x7 RoI features, predictor K and 4K."""
  rpn = (9 * 512 * 512 + 512) + (512 * anchors + anchors) + (512 * 4 * anchors + 4 * anchors)
  head = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096)
  pred = (4096 * num_classes + num_classes) + (4096 * 4 * num_classes + 4 * num_classes)
  return dict(backbone=vgg16_body(), rpn=rpn, box_head=head, box_predictor=pred)


PRESETS = sorted(
    os.path.relpath(p, REPO_ROOT)
    for p in glob.glob(os.path.join(REPO_ROOT, "gin_configs", "paper", "*.gin")))


def _architecture(path):
  """(hashable build_model bindings, reference module counts, frozen VGG params) of a preset."""
  gin.clear_config()
  config.parse_gin([path], finalize=False)  # as model_summary parses: no checkpoint needed
  b = gin.get_bindings("build_model")
  if b.get("backbone") == "vgg16":
    ref = faster_rcnn_vgg16_reference()
    frozen = sum(9 * cin * c + c
                 for cin, c in [(3, 64), (64, 64), (64, 128), (128,
                                                               128)][:2 * b.get("freeze_at", 0)])
  else:
    ref = mask_rcnn_fpn_reference(b.get("depth", 50),
                                  b.get("groups", 1),
                                  b.get("width_per_group", 64),
                                  num_classes=len(gin.query_parameter("InputConfig.category_ids")) +
                                  1,
                                  mask_on=b.get("mask_on", True),
                                  num_keypoints=b.get("num_keypoints", 0),
                                  cascade_stages=max(1, len(b.get("cascade_ious", ()))))
    frozen = 0
  key = tuple(
      sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
             for k, v in b.items()
             if not k.startswith(("rpn_pre", "rpn_post", "detections", "roi_"))))
  return key, ref, frozen


def test_every_paper_preset_matches_its_reference_architecture():
  """Builds each distinct architecture among the presets once and compares every module."""
  seen = {}
  for path in PRESETS:
    key, ref, frozen = _architecture(path)
    if key not in seen:
      seen[key] = build_and_summarize()
    summary = seen[key]
    assert summary["modules"] == ref, path
    assert summary["total"] == sum(ref.values()), path
    assert summary["trainable"] == summary["total"] - frozen, path
    gin.clear_config()
  # R50, R101, X152, SyncBN R50, VGG-16 (scratch and frozen conv1-2), X152 cascade, keypoints
  assert len(seen) >= 8


def test_cli_prints_the_r50_gn_counts():
  out = subprocess.run([
      sys.executable, "-m", "rethink_tf.tools.model_summary",
      "--gin_file=gin_configs/paper/r50_fpn_gn_scratch_3x.gin"
  ],
                       cwd=REPO_ROOT,
                       capture_output=True,
                       text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  modules = mask_rcnn_fpn_reference(50, 1, 64)
  assert summary["modules"] == modules
  assert summary["total"] == sum(modules.values()) == summary["trainable"] == 45_715_509


@pytest.mark.parametrize("name", [
    "r50_fpn_gn_scratch_3x", "r101_fpn_gn_scratch_6x", "x152_32x8d_fpn_gn_scratch_9x_aug",
    "vgg16_faster_rcnn_scratch_11x"
])
def test_documented_table_is_current(name):
  """docs/paper.md quotes each architecture's total; it must equal the reference."""
  _, ref, _ = _architecture(f"gin_configs/paper/{name}.gin")
  gin.clear_config()
  doc = open(os.path.join(REPO_ROOT, "docs", "paper.md")).read()
  assert f"{sum(ref.values()):,}" in doc, name
