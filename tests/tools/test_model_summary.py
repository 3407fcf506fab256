"""model_summary of the paper preset equals Detectron's R50-FPN-GN Mask R-CNN, module by module."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def detectron_r50_fpn_gn_counts(num_classes=81):
  """Parameter counts of Detectron's e2e_mask_rcnn_R-50-FPN GN model, derived by hand.

  ResNet-50 = torchvision's 25,557,032 minus the 1000-way fc (GN has BN's affine count).
  FPN: GN laterals (1x1, no bias) and outputs (3x3, no bias) on C2..C5; P6 is a max-pool.
  RPN: 3x3 conv with bias, 1x1 objectness (3) and deltas (12). Box head 4conv1fc: four 3x3
  GN convs (no bias) + fc 1024. Predictor: cls 81, class-specific boxes 4 x 81. Mask head:
  four 3x3 GN convs + 2x2 deconv with bias; predictor 1x1 to 81 class masks.
  """
  gn = lambda c: 2 * c
  c = 256
  fpn = sum(cin * c + gn(c) for cin in (256, 512, 1024, 2048)) + 4 * (9 * c * c + gn(c))
  rpn = (9 * c * c + c) + (c * 3 + 3) + (c * 12 + 12)
  box_head = 4 * (9 * c * c + gn(c)) + (c * 7 * 7 * 1024 + 1024)
  box_pred = (1024 * num_classes + num_classes) + (1024 * 4 * num_classes + 4 * num_classes)
  mask_head = 4 * (9 * c * c + gn(c)) + (4 * c * c + c)
  mask_pred = c * num_classes + num_classes
  modules = dict(backbone=25_557_032 - 2_049_000, fpn=fpn, rpn=rpn, box_head=box_head,
                 box_predictor=box_pred, mask_head=mask_head, mask_predictor=mask_pred)
  return modules, sum(modules.values())


def test_paper_preset_matches_detectron_architecture():
  out = subprocess.run([sys.executable, "-m", "rethink_tf.tools.model_summary",
                        "--gin_file=gin_configs/paper/r50_fpn_gn_scratch_3x.gin"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  modules, total = detectron_r50_fpn_gn_counts()
  assert summary["modules"] == modules
  assert summary["total"] == total == summary["trainable"]
