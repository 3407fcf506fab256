"""What a detectron2 or Detectron detector is, in this project's bindings.

A converted detector is described by a `DetectorSpec`: the `build_model` and `InputConfig`
bindings that rebuild it here, read from the source's config file (detectron2 `config.yaml`
with its `_BASE_` chain, or a Detectron yaml) over that framework's defaults, with the
architecture taken from the weights where the config does not give it (no config at all, or a
detectron2 config without `RESNETS.NUM_BLOCKS_PER_STAGE`). A config asking for something this
project does not build (another meta-architecture, backbone, head, norm or box coding) is a
`SpecError` naming the key.

This module reads the configs (defaults, `_BASE_` chains) and infers the architecture from the
weights; `detector_specs.py` turns a read config into a spec. The conventions each binding
carries are documented, with the source lines they follow, in docs/architecture.md.
"""

import ast
import copy
import dataclasses
import os
import re
from typing import Dict, List, Optional

import numpy as np
import yaml

from rethink_tf.modeling.backbone.resnet import BLOCK_COUNTS

FORMATS = ("detectron2", "detectron")


class SpecError(ValueError):
  """A source config or checkpoint describes a detector this project cannot rebuild."""


@dataclasses.dataclass
class DetectorSpec:
  """The bindings of a converted detector (gin names without the configurable prefix)."""
  fmt: str
  model: Dict[str, object]  # build_model.<name>
  inputs: Dict[str, object]  # InputConfig.<name>
  num_classes: int  # foreground classes of the source
  block_counts: List[int]
  fpn_levels: List[int]  # backbone stages that feed the FPN (2..5)


# ---------------------------------------------------------------------------------------------
# Config files.

# detectron2's defaults (detectron2/config/defaults.py) for every key read here.
D2_DEFAULTS = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "MASK_ON": False,
        "KEYPOINT_ON": False,
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "RESNETS": {
            "DEPTH": 50, "NUM_GROUPS": 1, "NORM": "FrozenBN", "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True, "RES5_DILATION": 1, "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64, "DEFORM_ON_PER_STAGE": [False] * 4, "OUT_FEATURES": ["res4"]
        },
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "PROPOSAL_GENERATOR": {"NAME": "RPN", "MIN_SIZE": 0},
        "ANCHOR_GENERATOR": {
            "NAME": "DefaultAnchorGenerator", "SIZES": [[32, 64, 128, 256, 512]],
            "ASPECT_RATIOS": [[0.5, 1.0, 2.0]], "OFFSET": 0.0
        },
        "RPN": {
            "HEAD_NAME": "StandardRPNHead", "IN_FEATURES": ["res4"], "PRE_NMS_TOPK_TRAIN": 12000,
            "PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TRAIN": 2000, "POST_NMS_TOPK_TEST": 1000,
            "NMS_THRESH": 0.7, "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0], "CONV_DIMS": [-1]
        },
        "ROI_HEADS": {
            "NAME": "Res5ROIHeads", "NUM_CLASSES": 80, "IN_FEATURES": ["res4"],
            "BATCH_SIZE_PER_IMAGE": 512, "POSITIVE_FRACTION": 0.25, "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5, "IOU_THRESHOLDS": [0.5]
        },
        "ROI_BOX_HEAD": {
            "NAME": "", "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0,
            "POOLER_TYPE": "ROIAlignV2", "NUM_FC": 0, "FC_DIM": 1024, "NUM_CONV": 0,
            "CONV_DIM": 256, "NORM": "", "CLS_AGNOSTIC_BBOX_REG": False,
            "BBOX_REG_WEIGHTS": [10., 10., 5., 5.], "USE_SIGMOID_CE": False
        },
        "ROI_BOX_CASCADE_HEAD": {
            "BBOX_REG_WEIGHTS": [[10., 10., 5., 5.], [20., 20., 10., 10.], [30., 30., 15., 15.]],
            "IOUS": [0.5, 0.6, 0.7]
        },
        "ROI_MASK_HEAD": {
            "NAME": "MaskRCNNConvUpsampleHead", "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0,
            "NUM_CONV": 0, "CONV_DIM": 256, "NORM": "", "CLS_AGNOSTIC_MASK": False,
            "POOLER_TYPE": "ROIAlignV2"
        },
        "ROI_KEYPOINT_HEAD": {
            "NAME": "KRCNNConvDeconvUpsampleHead", "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0, "CONV_DIMS": [512] * 8, "NUM_KEYPOINTS": 17,
            "POOLER_TYPE": "ROIAlignV2"
        },
    },
    "INPUT": {"MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "FORMAT": "BGR"},
    "TEST": {"DETECTIONS_PER_IMAGE": 100},
}

# Detectron's defaults (detectron/core/config.py) for every key read here.
DETECTRON_DEFAULTS = {
    "MODEL": {
        "TYPE": "", "CONV_BODY": "", "NUM_CLASSES": -1, "CLS_AGNOSTIC_BBOX_REG": False,
        "BBOX_REG_WEIGHTS": [10., 10., 5.,
                             5.], "MASK_ON": False, "KEYPOINTS_ON": False, "FASTER_RCNN": False
    },
    "RESNETS": {
        "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STRIDE_1X1": True,
        "TRANS_FUNC": "bottleneck_transformation", "STEM_FUNC": "basic_bn_stem",
        "SHORTCUT_FUNC": "basic_bn_shortcut", "RES5_DILATION": 1
    },
    "FPN": {
        "FPN_ON": False, "DIM": 256, "USE_GN": False, "RPN_ANCHOR_START_SIZE": 32,
        "RPN_ASPECT_RATIOS": [0.5, 1, 2], "RPN_MIN_LEVEL": 2, "RPN_MAX_LEVEL": 6,
        "ROI_MIN_LEVEL": 2, "ROI_MAX_LEVEL": 5, "EXTRA_CONV_LEVELS": False,
        "MULTILEVEL_ROIS": False, "MULTILEVEL_RPN": False
    },
    "FAST_RCNN": {
        "ROI_BOX_HEAD": "", "MLP_HEAD_DIM": 1024, "CONV_HEAD_DIM": 256, "NUM_STACKED_CONVS": 4,
        "ROI_XFORM_METHOD": "RoIPoolF", "ROI_XFORM_SAMPLING_RATIO": 0, "ROI_XFORM_RESOLUTION": 14
    },
    "MRCNN": {
        "ROI_MASK_HEAD": "", "RESOLUTION": 14, "ROI_XFORM_METHOD": "RoIAlign",
        "ROI_XFORM_RESOLUTION": 7, "ROI_XFORM_SAMPLING_RATIO": 0, "DIM_REDUCED": 256, "DILATION": 2,
        "UPSAMPLE_RATIO": 1, "USE_FC_OUTPUT": False, "CLS_SPECIFIC_MASK": True
    },
    "TEST": {
        "SCALE": 600, "MAX_SIZE": 1000, "NMS": 0.3, "RPN_NMS_THRESH": 0.7,
        "RPN_PRE_NMS_TOP_N": 12000, "RPN_POST_NMS_TOP_N": 2000, "RPN_MIN_SIZE": 0,
        "DETECTIONS_PER_IM": 100, "SCORE_THRESH": 0.05
    },
    "TRAIN": {
        "RPN_PRE_NMS_TOP_N": 12000, "RPN_POST_NMS_TOP_N": 2000, "BATCH_SIZE_PER_IM": 64,
        "FG_FRACTION": 0.25
    },
    "GROUP_NORM": {"NUM_GROUPS": 32, "DIM_PER_GP": -1, "EPSILON": 1e-5},
    "PIXEL_MEANS": [[[102.9801, 115.9465, 122.7717]]],
}


def _literal(value):
  """Strings such as "(800,)" or "[0.5, 1.0]" as Python values (as yacs/fvcore decode them)."""
  if isinstance(value, str) and value[:1] in "([{":
    try:
      return ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return value
  if isinstance(value, dict):
    return {k: _literal(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_literal(v) for v in value]
  return value


def _merge(base: dict, update: dict) -> dict:
  out = copy.deepcopy(base)
  for k, v in update.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def read_config(path: str, fmt: str, _depth: int = 0) -> dict:
  """A yaml config over its framework's defaults; detectron2's `_BASE_` files (relative to the
  file) are merged first."""
  try:
    with open(path) as f:
      data = yaml.safe_load(f) or {}
  except (OSError, yaml.YAMLError) as e:
    raise SpecError(f"{path}: cannot read it as a yaml config ({str(e).splitlines()[0]})") from e
  if not isinstance(data, dict):
    raise SpecError(f"{path}: a config must be a yaml mapping, got {type(data).__name__}")
  data = _literal(data)
  base = D2_DEFAULTS if fmt == "detectron2" else DETECTRON_DEFAULTS
  parent = data.pop("_BASE_", None)
  if parent is not None:
    if _depth > 10:
      raise SpecError(f"{path}: _BASE_ chain deeper than 10 files")
    parent_path = os.path.join(os.path.dirname(path), parent)
    if not os.path.exists(parent_path):
      raise SpecError(f"{path}: its _BASE_ {parent!r} was not found at {parent_path}")
    base = read_config(parent_path, fmt, _depth + 1)
  return _merge(base, data)


def config_value(cfg: dict, key: str):
  node = cfg
  for part in key.split("."):
    node = node[part]
  return node


def require_choice(cfg: dict, key: str, allowed, path: str):
  value = config_value(cfg, key)
  ok = allowed(value) if callable(allowed) else value in allowed
  if not ok:
    choices = "" if callable(allowed) else f" (supported: {', '.join(map(repr, allowed))})"
    raise SpecError(f"{path}: {key} = {value!r} is not supported{choices}")
  return value


# ---------------------------------------------------------------------------------------------
# Architecture from the weights.


def infer_block_counts(names, fmt: str) -> List[int]:
  """Blocks per stage res2..res5 from the checkpoint's tensor names."""
  pattern = (r"backbone\.bottom_up\.res(\d)\.(\d+)\."
             if fmt == "detectron2" else r"res(\d)_(\d+)_branch2a_w$")
  counts = {}
  for name in names:
    m = re.match(pattern, name)
    if m:
      stage, block = int(m.group(1)), int(m.group(2))
      counts[stage] = max(counts.get(stage, 0), block + 1)
  if sorted(counts) != [2, 3, 4, 5]:
    raise SpecError(f"the checkpoint has no ResNet stages res2..res5 in {fmt} names (found "
                    f"stages {sorted(counts)}): is it a {fmt} ResNet-FPN detector?")
  return [counts[s] for s in (2, 3, 4, 5)]


def depth_of(block_counts: List[int]) -> Optional[int]:
  for depth, counts in BLOCK_COUNTS.items():
    if list(counts) == list(block_counts):
      return depth
  return None


def count_matching(names, pattern: str) -> int:
  return len({m.group(1) for n in names for m in [re.match(pattern, n)] if m})


def default_config(fmt: str, tensors: Dict[str, np.ndarray]) -> dict:
  """The config used without --config: the framework's defaults for its COCO ResNet-FPN
  recipe (detectron2's Base-RCNN-FPN.yaml, Detectron's 12_2017 / GN baselines), with the
  architecture (norms, heads, classes, widths) read from the weights."""
  names = list(tensors)
  has = lambda pattern: any(re.search(pattern, n) for n in names)
  if fmt == "detectron2":
    norm_of = lambda prefix: ("GN" if has(rf"^{prefix}.*\.norm\.weight$") and not has(
        rf"^{prefix}.*\.norm\.running_mean$") else "FrozenBN"
                              if has(rf"^{prefix}.*\.norm\.running_mean$") else "")
    cascade = has(r"^roi_heads\.box_head\.0\.")
    box = r"roi_heads\.box_head\.(?:0\.)?"
    stem = tensors.get("backbone.bottom_up.stem.conv1.weight")
    res2 = tensors.get("backbone.bottom_up.res2.0.conv3.weight")
    res2_in = tensors.get("backbone.bottom_up.res2.0.conv2.weight")
    bottleneck = tensors.get("backbone.bottom_up.res2.0.conv1.weight")
    if stem is None or res2 is None or res2_in is None or bottleneck is None:
      raise SpecError("the checkpoint has no detectron2 ResNet stem and res2 "
                      "(backbone.bottom_up.stem.conv1.weight, ...res2.0.conv1/2/3.weight)")
    groups = bottleneck.shape[0] // res2_in.shape[1]
    score = tensors.get("roi_heads.box_predictor.cls_score.weight",
                        tensors.get("roi_heads.box_predictor.0.cls_score.weight"))
    if score is None:
      raise SpecError("the checkpoint has no roi_heads.box_predictor.cls_score.weight")
    keypoints = tensors.get("roi_heads.keypoint_head.score_lowres.weight")
    model = {
        "MASK_ON": has(r"^roi_heads\.mask_head\."),
        "KEYPOINT_ON": keypoints is not None,
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone"},
        "RESNETS": {
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "NUM_BLOCKS_PER_STAGE": infer_block_counts(names, fmt),
            "NORM": norm_of(r"backbone\.bottom_up"),
            "NUM_GROUPS": groups,
            "WIDTH_PER_GROUP": bottleneck.shape[0] // groups,
            "STEM_OUT_CHANNELS": stem.shape[0],
            "RES2_OUT_CHANNELS": res2.shape[0],
            # Torch and Caffe2-trained models: stride in the 3x3 (the 1x1 layout is
            # MSRA's ImageNet weights only; pass --config for those).
            "STRIDE_IN_1X1": False
        },
        "FPN": {
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "OUT_CHANNELS": tensors["backbone.fpn_output2.weight"].shape[0],
            "NORM": norm_of(r"backbone\.fpn_")
        },
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]]},
        "RPN": {
            "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TRAIN": 2000,
            "PRE_NMS_TOPK_TEST": 1000, "POST_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TEST": 1000
        },
        "ROI_HEADS": {
            "NAME": "CascadeROIHeads" if cascade else "StandardROIHeads",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"], "NUM_CLASSES": score.shape[0] - 1
        },
        "ROI_BOX_HEAD": {
            "NAME":
                "FastRCNNConvFCHead", "POOLER_RESOLUTION":
                    7, "NUM_CONV":
                        count_matching(names, box + r"conv(\d+)\.weight$"), "NUM_FC":
                            count_matching(names, box + r"fc(\d+)\.weight$"), "NORM":
                                norm_of(box), "CLS_AGNOSTIC_BBOX_REG":
                                    cascade or
                                    (tensors.get("roi_heads.box_predictor.bbox_pred.weight",
                                                 np.zeros([0])).shape[0] == 4)
        },
        "ROI_MASK_HEAD": {
            "NUM_CONV": count_matching(names, r"roi_heads\.mask_head\.mask_fcn(\d+)\."),
            "NORM": norm_of(r"roi_heads\.mask_head"), "POOLER_RESOLUTION": 14
        },
    }
    for head, key in (("ROI_BOX_HEAD", box + r"conv1\.weight"),
                      ("ROI_MASK_HEAD", r"roi_heads\.mask_head\.mask_fcn1\.weight")):
      found = [tensors[n] for n in names if re.match(key + "$", n)]
      if found:
        model[head]["CONV_DIM"] = found[0].shape[0]
    fc = [tensors[n] for n in names if re.match(box + r"fc1\.weight$", n)]
    if fc:
      model["ROI_BOX_HEAD"]["FC_DIM"] = fc[0].shape[0]
    if keypoints is not None:
      convs = [
          tensors[f"roi_heads.keypoint_head.conv_fcn{i}.weight"].shape[0]
          for i in range(1, 1 + count_matching(names, r"roi_heads\.keypoint_head\.conv_fcn(\d+)\."))
      ]
      model["ROI_KEYPOINT_HEAD"] = {"CONV_DIMS": convs, "NUM_KEYPOINTS": keypoints.shape[1]}
    return _merge(D2_DEFAULTS, {"MODEL": model})

  gn = has(r"_gn_s$")
  box_convs = count_matching(names, r"^head_conv(\d+)_w$")
  box_head = (
      "fast_rcnn_heads.add_roi_Xconv1fc_gn_head" if box_convs and has(r"^head_conv1_gn_s$") else
      "fast_rcnn_heads.add_roi_Xconv1fc_head" if box_convs else "fast_rcnn_heads.add_roi_2mlp_head")
  mask_convs = max(count_matching(names, r"^_mask_fcn(\d+)_w$"),
                   count_matching(names, r"^_\[mask\]_fcn(\d+)_w$"))
  mask_head = (f"mask_rcnn_heads.mask_rcnn_fcn_head_v1up{mask_convs}convs" +
               ("_gn" if "_mask_fcn1_gn_s" in tensors else ""))
  stem = tensors.get("conv1_w")
  width = tensors.get("res2_0_branch2a_w")
  groups_in = tensors.get("res2_0_branch2b_w")
  if stem is None or width is None or groups_in is None:
    raise SpecError("the checkpoint has no Detectron ResNet stem and res2 "
                    "(conv1_w, res2_0_branch2a_w, res2_0_branch2b_w)")
  groups = width.shape[0] // groups_in.shape[1]
  return _merge(
      DETECTRON_DEFAULTS, {
          "MODEL": {
              "TYPE": "generalized_rcnn", "FASTER_RCNN": True,
              "MASK_ON": "mask_fcn_logits_w" in tensors
          }, "RESNETS": {
              "TRANS_FUNC": "bottleneck_gn_transformation" if gn else "bottleneck_transformation",
              "STRIDE_1X1": False, "NUM_GROUPS": groups, "WIDTH_PER_GROUP": width.shape[0] // groups
          }, "FPN": {
              "FPN_ON": True, "MULTILEVEL_ROIS": True, "MULTILEVEL_RPN": True, "USE_GN": any(
                  n.startswith("fpn_") and n.endswith("_gn_s") for n in names),
              "DIM": tensors["conv_rpn_fpn2_w"].shape[0] if "conv_rpn_fpn2_w" in tensors else 256
          }, "FAST_RCNN": {
              "ROI_BOX_HEAD": box_head, "ROI_XFORM_METHOD": "RoIAlign", "ROI_XFORM_RESOLUTION": 7,
              "ROI_XFORM_SAMPLING_RATIO": 2, "NUM_STACKED_CONVS": box_convs or 4,
              "CONV_HEAD_DIM": tensors["head_conv1_w"].shape[0] if box_convs else 256,
              "MLP_HEAD_DIM": tensors["fc6_w"].shape[0] if "fc6_w" in tensors else 1024
          }, "MRCNN": {
              "ROI_MASK_HEAD": mask_head, "RESOLUTION": 28, "ROI_XFORM_RESOLUTION": 14,
              "ROI_XFORM_SAMPLING_RATIO": 2, "DILATION": 1,
              "DIM_REDUCED": tensors["conv5_mask_w"].shape[1] if "conv5_mask_w" in tensors else 256
          }, "TEST": {
              "SCALE": 800, "MAX_SIZE": 1333, "NMS": 0.5, "RPN_PRE_NMS_TOP_N": 1000,
              "RPN_POST_NMS_TOP_N": 1000
          }
      })
