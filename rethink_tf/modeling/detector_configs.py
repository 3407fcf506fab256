"""What a detectron2 or Detectron detector is, in this project's bindings.

A converted detector is described by a `DetectorSpec`: the `build_model` and `InputConfig`
bindings that rebuild it here, read from the source's config file (detectron2 `config.yaml`
with its `_BASE_` chain, or a Detectron yaml) over that framework's defaults, with the
architecture taken from the weights where the config does not give it (no config at all, or a
detectron2 config without `RESNETS.NUM_BLOCKS_PER_STAGE`). A config asking for something this
project does not build (another meta-architecture, backbone, head, norm or box coding) is a
`SpecError` naming the key.

The conventions each binding carries are documented, with the source lines they follow, in
docs/architecture.md.
"""

import ast
import copy
import dataclasses
import os
import re
from typing import Dict, List, Optional

import numpy as np
import yaml

from rethink_tf.modeling.resnet import BLOCK_COUNTS

FORMATS = ("detectron2", "detectron")


class SpecError(ValueError):
  """A source config or checkpoint describes a detector this project cannot rebuild."""


@dataclasses.dataclass
class DetectorSpec:
  """The bindings of a converted detector (gin names without the configurable prefix)."""
  fmt: str
  model: Dict[str, object]          # build_model.<name>
  inputs: Dict[str, object]         # InputConfig.<name>
  num_classes: int                  # foreground classes of the source
  block_counts: List[int]
  fpn_levels: List[int]             # backbone stages that feed the FPN (2..5)


# ---------------------------------------------------------------------------------------------
# Config files.

# detectron2's defaults (detectron2/config/defaults.py) for every key read here.
D2_DEFAULTS = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": False, "KEYPOINT_ON": False,
        "PIXEL_MEAN": [103.530, 116.280, 123.675], "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "RESNETS": {"DEPTH": 50, "NUM_GROUPS": 1, "NORM": "FrozenBN", "WIDTH_PER_GROUP": 64,
                    "STRIDE_IN_1X1": True, "RES5_DILATION": 1, "RES2_OUT_CHANNELS": 256,
                    "STEM_OUT_CHANNELS": 64, "DEFORM_ON_PER_STAGE": [False] * 4,
                    "OUT_FEATURES": ["res4"]},
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "PROPOSAL_GENERATOR": {"NAME": "RPN", "MIN_SIZE": 0},
        "ANCHOR_GENERATOR": {"NAME": "DefaultAnchorGenerator",
                             "SIZES": [[32, 64, 128, 256, 512]],
                             "ASPECT_RATIOS": [[0.5, 1.0, 2.0]], "OFFSET": 0.0},
        "RPN": {"HEAD_NAME": "StandardRPNHead", "IN_FEATURES": ["res4"],
                "PRE_NMS_TOPK_TRAIN": 12000, "PRE_NMS_TOPK_TEST": 6000,
                "POST_NMS_TOPK_TRAIN": 2000, "POST_NMS_TOPK_TEST": 1000, "NMS_THRESH": 0.7,
                "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0], "CONV_DIMS": [-1]},
        "ROI_HEADS": {"NAME": "Res5ROIHeads", "NUM_CLASSES": 80, "IN_FEATURES": ["res4"],
                      "BATCH_SIZE_PER_IMAGE": 512, "POSITIVE_FRACTION": 0.25,
                      "SCORE_THRESH_TEST": 0.05, "NMS_THRESH_TEST": 0.5,
                      "IOU_THRESHOLDS": [0.5]},
        "ROI_BOX_HEAD": {"NAME": "", "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0,
                         "POOLER_TYPE": "ROIAlignV2", "NUM_FC": 0, "FC_DIM": 1024,
                         "NUM_CONV": 0, "CONV_DIM": 256, "NORM": "",
                         "CLS_AGNOSTIC_BBOX_REG": False, "BBOX_REG_WEIGHTS": [10., 10., 5., 5.],
                         "USE_SIGMOID_CE": False},
        "ROI_BOX_CASCADE_HEAD": {"BBOX_REG_WEIGHTS": [[10., 10., 5., 5.], [20., 20., 10., 10.],
                                                      [30., 30., 15., 15.]],
                                 "IOUS": [0.5, 0.6, 0.7]},
        "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "POOLER_RESOLUTION": 14,
                          "POOLER_SAMPLING_RATIO": 0, "NUM_CONV": 0, "CONV_DIM": 256,
                          "NORM": "", "CLS_AGNOSTIC_MASK": False, "POOLER_TYPE": "ROIAlignV2"},
        "ROI_KEYPOINT_HEAD": {"NAME": "KRCNNConvDeconvUpsampleHead", "POOLER_RESOLUTION": 14,
                              "POOLER_SAMPLING_RATIO": 0, "CONV_DIMS": [512] * 8,
                              "NUM_KEYPOINTS": 17, "POOLER_TYPE": "ROIAlignV2"},
    },
    "INPUT": {"MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "FORMAT": "BGR"},
    "TEST": {"DETECTIONS_PER_IMAGE": 100},
}

# Detectron's defaults (detectron/core/config.py) for every key read here.
DETECTRON_DEFAULTS = {
    "MODEL": {"TYPE": "", "CONV_BODY": "", "NUM_CLASSES": -1, "CLS_AGNOSTIC_BBOX_REG": False,
              "BBOX_REG_WEIGHTS": [10., 10., 5., 5.], "MASK_ON": False,
              "KEYPOINTS_ON": False, "FASTER_RCNN": False},
    "RESNETS": {"NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STRIDE_1X1": True,
                "TRANS_FUNC": "bottleneck_transformation", "STEM_FUNC": "basic_bn_stem",
                "SHORTCUT_FUNC": "basic_bn_shortcut", "RES5_DILATION": 1},
    "FPN": {"FPN_ON": False, "DIM": 256, "USE_GN": False, "RPN_ANCHOR_START_SIZE": 32,
            "RPN_ASPECT_RATIOS": [0.5, 1, 2], "RPN_MIN_LEVEL": 2, "RPN_MAX_LEVEL": 6,
            "ROI_MIN_LEVEL": 2, "ROI_MAX_LEVEL": 5, "EXTRA_CONV_LEVELS": False,
            "MULTILEVEL_ROIS": False, "MULTILEVEL_RPN": False},
    "FAST_RCNN": {"ROI_BOX_HEAD": "", "MLP_HEAD_DIM": 1024, "CONV_HEAD_DIM": 256,
                  "NUM_STACKED_CONVS": 4, "ROI_XFORM_METHOD": "RoIPoolF",
                  "ROI_XFORM_SAMPLING_RATIO": 0, "ROI_XFORM_RESOLUTION": 14},
    "MRCNN": {"ROI_MASK_HEAD": "", "RESOLUTION": 14, "ROI_XFORM_METHOD": "RoIAlign",
              "ROI_XFORM_RESOLUTION": 7, "ROI_XFORM_SAMPLING_RATIO": 0, "DIM_REDUCED": 256,
              "DILATION": 2, "UPSAMPLE_RATIO": 1, "USE_FC_OUTPUT": False,
              "CLS_SPECIFIC_MASK": True},
    "TEST": {"SCALE": 600, "MAX_SIZE": 1000, "NMS": 0.3, "RPN_NMS_THRESH": 0.7,
             "RPN_PRE_NMS_TOP_N": 12000, "RPN_POST_NMS_TOP_N": 2000, "RPN_MIN_SIZE": 0,
             "DETECTIONS_PER_IM": 100, "SCORE_THRESH": 0.05},
    "TRAIN": {"RPN_PRE_NMS_TOP_N": 12000, "RPN_POST_NMS_TOP_N": 2000, "BATCH_SIZE_PER_IM": 64,
              "FG_FRACTION": 0.25},
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


def _get(cfg: dict, key: str):
  node = cfg
  for part in key.split("."):
    node = node[part]
  return node


def _require(cfg: dict, key: str, allowed, path: str):
  value = _get(cfg, key)
  ok = allowed(value) if callable(allowed) else value in allowed
  if not ok:
    choices = "" if callable(allowed) else f" (supported: {', '.join(map(repr, allowed))})"
    raise SpecError(f"{path}: {key} = {value!r} is not supported{choices}")
  return value


# ---------------------------------------------------------------------------------------------
# Architecture from the weights.

def infer_block_counts(names, fmt: str) -> List[int]:
  """Blocks per stage res2..res5 from the checkpoint's tensor names."""
  pattern = (r"backbone\.bottom_up\.res(\d)\.(\d+)\." if fmt == "detectron2"
             else r"res(\d)_(\d+)_branch2a_w$")
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


def _count(names, pattern: str) -> int:
  return len({m.group(1) for n in names for m in [re.match(pattern, n)] if m})


# ---------------------------------------------------------------------------------------------
# detectron2.

_D2_NORMS = {"GN": "GN", "SyncBN": "SyncBN", "BN": "BN", "FrozenBN": "FrozenBN", "": None,
             "naiveSyncBN": "SyncBN"}


def _pooler(cfg, head: str, path: str, out: dict, prefix: str):
  kind = _require(cfg, f"MODEL.{head}.POOLER_TYPE", ("ROIAlignV2", "ROIAlign"), path)
  out[f"{prefix}_pool_size"] = int(_get(cfg, f"MODEL.{head}.POOLER_RESOLUTION"))
  out[f"{prefix}_sampling_ratio"] = int(_get(cfg, f"MODEL.{head}.POOLER_SAMPLING_RATIO"))
  return kind == "ROIAlignV2"


def detectron2_spec(cfg: dict, tensors: Dict[str, np.ndarray], path: str) -> DetectorSpec:
  """The bindings of a detectron2 GeneralizedRCNN with a ResNet-FPN backbone."""
  m = {}
  _require(cfg, "MODEL.META_ARCHITECTURE", ("GeneralizedRCNN",), path)
  _require(cfg, "MODEL.BACKBONE.NAME", lambda v: "resnet_fpn" in str(v), path)
  _require(cfg, "MODEL.PROPOSAL_GENERATOR.NAME", ("RPN",), path)
  _require(cfg, "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", (0,), path)
  _require(cfg, "MODEL.ANCHOR_GENERATOR.NAME", ("DefaultAnchorGenerator",), path)
  _require(cfg, "MODEL.RPN.HEAD_NAME", ("StandardRPNHead",), path)
  _require(cfg, "MODEL.RPN.CONV_DIMS", lambda v: list(v) == [-1], path)
  _require(cfg, "MODEL.RPN.BBOX_REG_WEIGHTS", lambda v: list(v) == [1, 1, 1, 1], path)
  _require(cfg, "MODEL.RPN.IN_FEATURES", lambda v: list(v) == ["p2", "p3", "p4", "p5", "p6"],
           path)
  roi_heads = _require(cfg, "MODEL.ROI_HEADS.NAME", ("StandardROIHeads", "CascadeROIHeads"),
                       path)
  _require(cfg, "MODEL.ROI_HEADS.IN_FEATURES", lambda v: list(v) == ["p2", "p3", "p4", "p5"],
           path)
  _require(cfg, "MODEL.FPN.FUSE_TYPE", ("sum",), path)
  _require(cfg, "MODEL.FPN.IN_FEATURES", lambda v: list(v) == ["res2", "res3", "res4", "res5"],
           path)
  _require(cfg, "MODEL.RESNETS.RES5_DILATION", (1,), path)
  _require(cfg, "MODEL.RESNETS.DEFORM_ON_PER_STAGE", lambda v: not any(v), path)
  norm = _D2_NORMS[_require(cfg, "MODEL.RESNETS.NORM", tuple(_D2_NORMS), path)]
  fpn_norm = _D2_NORMS[_require(cfg, "MODEL.FPN.NORM", tuple(_D2_NORMS), path)]
  box_norm = _D2_NORMS[_require(cfg, "MODEL.ROI_BOX_HEAD.NORM", tuple(_D2_NORMS), path)]
  _require(cfg, "MODEL.ROI_BOX_HEAD.NAME", ("FastRCNNConvFCHead",), path)
  _require(cfg, "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", (False,), path)

  rn = _get(cfg, "MODEL.RESNETS")
  counts = rn.get("NUM_BLOCKS_PER_STAGE")
  if counts is None:
    depth = _require(cfg, "MODEL.RESNETS.DEPTH", tuple(BLOCK_COUNTS), path)
    counts = list(BLOCK_COUNTS[depth])
  counts = [int(c) for c in counts]
  multiplier = rn["RES2_OUT_CHANNELS"] / 256.0
  if rn["STEM_OUT_CHANNELS"] != int(64 * multiplier):
    raise SpecError(f"{path}: MODEL.RESNETS.STEM_OUT_CHANNELS = {rn['STEM_OUT_CHANNELS']} with "
                    f"RES2_OUT_CHANNELS = {rn['RES2_OUT_CHANNELS']} is not supported (the stem "
                    "has a quarter of res2's channels here)")
  m.update(backbone="resnet", use_fpn=True, norm=norm, fpn_norm=fpn_norm, head_norm=box_norm,
           depth=depth_of(counts) or 50, block_counts=counts,
           groups=int(rn["NUM_GROUPS"]),
           width_per_group=int(round(rn["WIDTH_PER_GROUP"] / multiplier)),
           width_multiplier=multiplier, stride_in_1x1=bool(rn["STRIDE_IN_1X1"]),
           fpn_channels=int(_get(cfg, "MODEL.FPN.OUT_CHANNELS")), freeze_at=0)

  ag = _get(cfg, "MODEL.ANCHOR_GENERATOR")
  sizes = [list(s) for s in ag["SIZES"]]
  if len(sizes) != 5 or any(len(s) != 1 for s in sizes):
    raise SpecError(f"{path}: MODEL.ANCHOR_GENERATOR.SIZES = {ag['SIZES']} is not supported "
                    "(one size per level P2..P6)")
  per_stride = [s[0] / 2.0 ** (l + 2) for l, s in enumerate(sizes)]
  if len(set(per_stride)) != 1:
    raise SpecError(f"{path}: MODEL.ANCHOR_GENERATOR.SIZES = {ag['SIZES']} is not supported "
                    "(sizes must be a constant multiple of the level's stride)")
  ratios = ag["ASPECT_RATIOS"]
  ratios = ratios[0] if isinstance(ratios[0], (list, tuple)) else ratios
  if any(list(r) != list(ratios) for r in ag["ASPECT_RATIOS"]
         if isinstance(r, (list, tuple))):
    raise SpecError(f"{path}: MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS must be the same on every "
                    "level")
  # detectron2's ratios are height / width, ours width / height: same anchors, same order.
  m.update(anchor_size=per_stride[0], aspect_ratios=tuple(1.0 / float(r) for r in ratios),
           anchor_offset=float(ag["OFFSET"]))

  rpn = _get(cfg, "MODEL.RPN")
  m.update(rpn_pre_nms_topk_train=int(rpn["PRE_NMS_TOPK_TRAIN"]),
           rpn_post_nms_topk_train=int(rpn["POST_NMS_TOPK_TRAIN"]),
           rpn_pre_nms_topk_test=int(rpn["PRE_NMS_TOPK_TEST"]),
           rpn_post_nms_topk_test=int(rpn["POST_NMS_TOPK_TEST"]),
           rpn_nms_threshold=float(rpn["NMS_THRESH"]))

  rh = _get(cfg, "MODEL.ROI_HEADS")
  m.update(roi_samples_per_image=int(rh["BATCH_SIZE_PER_IMAGE"]),
           roi_positive_fraction=float(rh["POSITIVE_FRACTION"]),
           score_threshold=float(rh["SCORE_THRESH_TEST"]),
           nms_threshold=float(rh["NMS_THRESH_TEST"]),
           detections_per_image=int(_get(cfg, "TEST.DETECTIONS_PER_IMAGE")))

  bh = _get(cfg, "MODEL.ROI_BOX_HEAD")
  if bh["NUM_CONV"] > 0 and bh["NUM_FC"] == 1:
    m.update(box_head_type="4conv1fc", box_head_num_conv=int(bh["NUM_CONV"]),
             head_conv_dim=int(bh["CONV_DIM"]))
  elif bh["NUM_CONV"] == 0 and bh["NUM_FC"] == 2:
    m.update(box_head_type="2fc")
  else:
    raise SpecError(f"{path}: MODEL.ROI_BOX_HEAD with NUM_CONV = {bh['NUM_CONV']} and NUM_FC = "
                    f"{bh['NUM_FC']} is not supported (N convs + 1 fc, or 0 convs + 2 fc)")
  m["head_fc_dim"] = int(bh["FC_DIM"])
  aligned = _pooler(cfg, "ROI_BOX_HEAD", path, m, "box")
  if roi_heads == "CascadeROIHeads":
    ch = _get(cfg, "MODEL.ROI_BOX_CASCADE_HEAD")
    m.update(cascade_ious=tuple(float(v) for v in ch["IOUS"]),
             cascade_box_weights=tuple(tuple(float(x) for x in w)
                                       for w in ch["BBOX_REG_WEIGHTS"]))
  else:
    _require(cfg, "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
             lambda v: list(v) == [10, 10, 5, 5], path)
    m["class_agnostic_box_regression"] = bool(bh["CLS_AGNOSTIC_BBOX_REG"])

  m["mask_on"] = bool(_get(cfg, "MODEL.MASK_ON"))
  if m["mask_on"]:
    mh = _get(cfg, "MODEL.ROI_MASK_HEAD")
    _require(cfg, "MODEL.ROI_MASK_HEAD.NAME", ("MaskRCNNConvUpsampleHead",), path)
    _require(cfg, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", (False,), path)
    if _D2_NORMS.get(mh["NORM"], "?") != box_norm:
      raise SpecError(f"{path}: MODEL.ROI_MASK_HEAD.NORM = {mh['NORM']!r} differs from "
                      f"MODEL.ROI_BOX_HEAD.NORM = {bh['NORM']!r}: the heads share one norm here")
    m.update(mask_head_num_conv=int(mh["NUM_CONV"]), mask_head_conv_dim=int(mh["CONV_DIM"]))
    if _pooler(cfg, "ROI_MASK_HEAD", path, m, "mask") != aligned:
      raise SpecError(f"{path}: the box and mask heads' POOLER_TYPE differ")
  if _get(cfg, "MODEL.KEYPOINT_ON"):
    kh = _get(cfg, "MODEL.ROI_KEYPOINT_HEAD")
    _require(cfg, "MODEL.ROI_KEYPOINT_HEAD.NAME", ("KRCNNConvDeconvUpsampleHead",), path)
    dims = _require(cfg, "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
                    lambda v: len(v) > 0 and len(set(v)) == 1, path)
    m.update(num_keypoints=int(kh["NUM_KEYPOINTS"]), keypoint_head_conv_dim=int(dims[0]),
             keypoint_head_num_conv=len(dims), keypoint_head_norm=None)
    if _pooler(cfg, "ROI_KEYPOINT_HEAD", path, m, "keypoint") != aligned:
      raise SpecError(f"{path}: the box and keypoint heads' POOLER_TYPE differ")
  m.update(roi_align_aligned=aligned, roi_level_epsilon=1e-8)

  fmt_in = _require(cfg, "INPUT.FORMAT", ("BGR", "RGB"), path)
  inputs = _test_size(int(_get(cfg, "INPUT.MIN_SIZE_TEST")),
                      int(_get(cfg, "INPUT.MAX_SIZE_TEST")))
  # detectron2 resizes uint8 images with PIL's bilinear filter (antialiased when shrinking).
  inputs.update(channel_order=fmt_in, resize_antialias=True,
                pixel_mean=tuple(float(v) for v in _get(cfg, "MODEL.PIXEL_MEAN")),
                pixel_std=tuple(float(v) for v in _get(cfg, "MODEL.PIXEL_STD")))
  return DetectorSpec("detectron2", m, inputs, int(rh["NUM_CLASSES"]), counts, [2, 3, 4, 5])


def _test_size(short: int, long: int) -> dict:
  """InputConfig's test-time resize: the padded canvas holds the largest resized image."""
  side = -(-long // 32) * 32
  return dict(short_side=short, max_long_side=long, padded_size=(side, side),
              # PIL (detectron2) and OpenCV (Detectron) decode JPEGs with libjpeg's accurate
              # IDCT; TensorFlow's default is the fast one.
              jpeg_dct_method="INTEGER_ACCURATE")


# ---------------------------------------------------------------------------------------------
# Detectron.

_DETECTRON_BODIES = {"FPN.add_fpn_ResNet50_conv5_body": 50,
                     "FPN.add_fpn_ResNet101_conv5_body": 101,
                     "FPN.add_fpn_ResNet152_conv5_body": 152}
_DETECTRON_BOX_HEADS = ("fast_rcnn_heads.add_roi_Xconv1fc_gn_head",
                        "fast_rcnn_heads.add_roi_Xconv1fc_head",
                        "fast_rcnn_heads.add_roi_2mlp_head")
# mask_rcnn_heads.mask_rcnn_fcn_head_v1up (2 convs), _v1up4convs[_gn]; N convs other than 4
# are Detectron's mask_rcnn_fcn_head_v1upXconvs[_gn] with num_convs = N.
_DETECTRON_MASK_HEAD = re.compile(r"mask_rcnn_heads\.mask_rcnn_fcn_head_v1up(?:(\d+)convs)?(_gn)?$")


def detectron_spec(cfg: dict, tensors: Dict[str, np.ndarray], path: str) -> DetectorSpec:
  """The bindings of a Detectron (Caffe2) generalized_rcnn with an FPN ResNet body."""
  m = {}
  _require(cfg, "MODEL.TYPE", ("generalized_rcnn",), path)
  body = _get(cfg, "MODEL.CONV_BODY")
  counts = infer_block_counts(tensors, "detectron")
  if body:
    depth = _require(cfg, "MODEL.CONV_BODY", tuple(_DETECTRON_BODIES), path)
    if list(BLOCK_COUNTS[_DETECTRON_BODIES[depth]]) != counts:
      raise SpecError(f"{path}: MODEL.CONV_BODY = {depth!r} but the weights have "
                      f"{counts} blocks per stage")
  _require(cfg, "FPN.EXTRA_CONV_LEVELS", (False,), path)
  _require(cfg, "RESNETS.RES5_DILATION", (1,), path)
  if _get(cfg, "MODEL.MASK_ON"):
    _require(cfg, "MRCNN.DILATION", (1,), path)
  if _get(cfg, "MODEL.KEYPOINTS_ON"):
    raise SpecError(f"{path}: MODEL.KEYPOINTS_ON: Detectron's keypoint head (its fixed "
                    "bilinear upsampling layer) is not supported; convert detectron2 keypoint "
                    "models instead")
  gn = _require(cfg, "RESNETS.TRANS_FUNC",
                ("bottleneck_gn_transformation", "bottleneck_transformation"),
                path) == "bottleneck_gn_transformation"
  fpn_gn = bool(_get(cfg, "FPN.USE_GN"))
  head = _require(cfg, "FAST_RCNN.ROI_BOX_HEAD", _DETECTRON_BOX_HEADS, path)
  groups = int(_get(cfg, "RESNETS.NUM_GROUPS"))
  width = int(_get(cfg, "RESNETS.WIDTH_PER_GROUP"))
  stem = tensors.get("conv1_w")
  multiplier = 1.0 if stem is None else stem.shape[0] / 64.0
  m.update(backbone="resnet", use_fpn=True, norm="GN" if gn else "FrozenBN",
           fpn_norm="GN" if fpn_gn else None, depth=depth_of(counts) or 50,
           block_counts=counts, groups=groups, width_per_group=int(round(width / multiplier)),
           width_multiplier=multiplier, stride_in_1x1=bool(_get(cfg, "RESNETS.STRIDE_1X1")),
           fpn_channels=int(_get(cfg, "FPN.DIM")), freeze_at=0,
           gn_num_groups=int(_get(cfg, "GROUP_NORM.NUM_GROUPS")))
  if _get(cfg, "GROUP_NORM.DIM_PER_GP") != -1:
    raise SpecError(f"{path}: GROUP_NORM.DIM_PER_GP is not supported (GN with NUM_GROUPS)")
  fr = _get(cfg, "FAST_RCNN")
  if head == "fast_rcnn_heads.add_roi_2mlp_head":
    m.update(box_head_type="2fc", head_norm=None)
  else:
    m.update(box_head_type="4conv1fc", box_head_num_conv=int(fr["NUM_STACKED_CONVS"]),
             head_conv_dim=int(fr["CONV_HEAD_DIM"]),
             head_norm="GN" if head.endswith("_gn_head") else None)
  m["head_fc_dim"] = int(fr["MLP_HEAD_DIM"])
  _require(cfg, "FAST_RCNN.ROI_XFORM_METHOD", ("RoIAlign",), path)
  m.update(box_pool_size=int(fr["ROI_XFORM_RESOLUTION"]),
           box_sampling_ratio=int(fr["ROI_XFORM_SAMPLING_RATIO"]))
  _require(cfg, "MODEL.BBOX_REG_WEIGHTS", lambda v: list(v) == [10, 10, 5, 5], path)
  m["class_agnostic_box_regression"] = bool(_get(cfg, "MODEL.CLS_AGNOSTIC_BBOX_REG"))
  m["mask_on"] = bool(_get(cfg, "MODEL.MASK_ON"))
  if m["mask_on"]:
    mr = _get(cfg, "MRCNN")
    mask_head = _require(cfg, "MRCNN.ROI_MASK_HEAD",
                         lambda v: bool(_DETECTRON_MASK_HEAD.match(str(v))), path)
    convs, gn_mask = _DETECTRON_MASK_HEAD.match(mask_head).groups()
    _require(cfg, "MRCNN.ROI_XFORM_METHOD", ("RoIAlign",), path)
    _require(cfg, "MRCNN.CLS_SPECIFIC_MASK", (True,), path)
    _require(cfg, "MRCNN.UPSAMPLE_RATIO", (1,), path)
    _require(cfg, "MRCNN.USE_FC_OUTPUT", (False,), path)
    if bool(gn_mask) != (m["head_norm"] == "GN"):
      raise SpecError(f"{path}: the box head {head} and mask head {mask_head} differ in norm: "
                      "the heads share one norm here")
    if mr["RESOLUTION"] != 2 * mr["ROI_XFORM_RESOLUTION"]:
      raise SpecError(f"{path}: MRCNN.RESOLUTION {mr['RESOLUTION']} must be twice "
                      f"MRCNN.ROI_XFORM_RESOLUTION {mr['ROI_XFORM_RESOLUTION']}")
    m.update(mask_head_num_conv=int(convs or 2),
             mask_head_conv_dim=int(mr["DIM_REDUCED"]),
             mask_pool_size=int(mr["ROI_XFORM_RESOLUTION"]),
             mask_sampling_ratio=int(mr["ROI_XFORM_SAMPLING_RATIO"]))
  fpn = _get(cfg, "FPN")
  if (fpn["RPN_MIN_LEVEL"], fpn["RPN_MAX_LEVEL"], fpn["ROI_MIN_LEVEL"],
      fpn["ROI_MAX_LEVEL"]) != (2, 6, 2, 5):
    raise SpecError(f"{path}: FPN levels other than RPN P2-P6 and RoI P2-P5 are not supported")
  m.update(anchor_size=float(fpn["RPN_ANCHOR_START_SIZE"]) / 4.0,
           aspect_ratios=tuple(1.0 / float(r) for r in fpn["RPN_ASPECT_RATIOS"]),
           box_plus_one=True, roi_align_aligned=False, roi_level_epsilon=1e-6)
  te, tr = _get(cfg, "TEST"), _get(cfg, "TRAIN")
  _require(cfg, "TEST.RPN_MIN_SIZE", (0,), path)
  m.update(rpn_pre_nms_topk_test=int(te["RPN_PRE_NMS_TOP_N"]),
           rpn_post_nms_topk_test=int(te["RPN_POST_NMS_TOP_N"]),
           rpn_pre_nms_topk_train=int(tr["RPN_PRE_NMS_TOP_N"]),
           rpn_post_nms_topk_train=int(tr["RPN_POST_NMS_TOP_N"]),
           rpn_nms_threshold=float(te["RPN_NMS_THRESH"]),
           roi_samples_per_image=int(tr["BATCH_SIZE_PER_IM"]),
           roi_positive_fraction=float(tr["FG_FRACTION"]),
           score_threshold=float(te["SCORE_THRESH"]), nms_threshold=float(te["NMS"]),
           detections_per_image=int(te["DETECTIONS_PER_IM"]))
  mean = np.asarray(_get(cfg, "PIXEL_MEANS"), np.float64).reshape(-1)
  inputs = _test_size(int(te["SCALE"]), int(te["MAX_SIZE"]))
  inputs.update(channel_order="BGR", pixel_mean=tuple(float(v) for v in mean),
                pixel_std=(1.0, 1.0, 1.0))
  num_classes = int(_get(cfg, "MODEL.NUM_CLASSES"))
  if num_classes < 2:
    score = tensors.get("cls_score_w")
    if score is None:
      raise SpecError(f"{path}: MODEL.NUM_CLASSES is not set and the weights have no "
                      "cls_score_w")
    num_classes = score.shape[0]
  return DetectorSpec("detectron", m, inputs, num_classes - 1, counts, [2, 3, 4, 5])


def default_config(fmt: str, tensors: Dict[str, np.ndarray]) -> dict:
  """The config used without --config: the framework's defaults for its COCO ResNet-FPN
  recipe (detectron2's Base-RCNN-FPN.yaml, Detectron's 12_2017 / GN baselines), with the
  architecture (norms, heads, classes, widths) read from the weights."""
  names = list(tensors)
  has = lambda pattern: any(re.search(pattern, n) for n in names)
  if fmt == "detectron2":
    norm_of = lambda prefix: ("GN" if has(rf"^{prefix}.*\.norm\.weight$")
                              and not has(rf"^{prefix}.*\.norm\.running_mean$")
                              else "FrozenBN" if has(rf"^{prefix}.*\.norm\.running_mean$")
                              else "")
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
        "RESNETS": {"OUT_FEATURES": ["res2", "res3", "res4", "res5"],
                    "NUM_BLOCKS_PER_STAGE": infer_block_counts(names, fmt),
                    "NORM": norm_of(r"backbone\.bottom_up"), "NUM_GROUPS": groups,
                    "WIDTH_PER_GROUP": bottleneck.shape[0] // groups,
                    "STEM_OUT_CHANNELS": stem.shape[0], "RES2_OUT_CHANNELS": res2.shape[0],
                    # Torch and Caffe2-trained models: stride in the 3x3 (the 1x1 layout is
                    # MSRA's ImageNet weights only; pass --config for those).
                    "STRIDE_IN_1X1": False},
        "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"],
                "OUT_CHANNELS": tensors["backbone.fpn_output2.weight"].shape[0],
                "NORM": norm_of(r"backbone\.fpn_")},
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]]},
        "RPN": {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TRAIN": 2000,
                "PRE_NMS_TOPK_TEST": 1000, "POST_NMS_TOPK_TRAIN": 1000,
                "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": "CascadeROIHeads" if cascade else "StandardROIHeads",
                      "IN_FEATURES": ["p2", "p3", "p4", "p5"],
                      "NUM_CLASSES": score.shape[0] - 1},
        "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "POOLER_RESOLUTION": 7,
                         "NUM_CONV": _count(names, box + r"conv(\d+)\.weight$"),
                         "NUM_FC": _count(names, box + r"fc(\d+)\.weight$"),
                         "NORM": norm_of(box), "CLS_AGNOSTIC_BBOX_REG": cascade or (
                             tensors.get("roi_heads.box_predictor.bbox_pred.weight",
                                         np.zeros([0])).shape[0] == 4)},
        "ROI_MASK_HEAD": {"NUM_CONV": _count(names, r"roi_heads\.mask_head\.mask_fcn(\d+)\."),
                          "NORM": norm_of(r"roi_heads\.mask_head"), "POOLER_RESOLUTION": 14},
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
      convs = [tensors[f"roi_heads.keypoint_head.conv_fcn{i}.weight"].shape[0]
               for i in range(1, 1 + _count(names, r"roi_heads\.keypoint_head\.conv_fcn(\d+)\."))]
      model["ROI_KEYPOINT_HEAD"] = {"CONV_DIMS": convs, "NUM_KEYPOINTS": keypoints.shape[1]}
    return _merge(D2_DEFAULTS, {"MODEL": model})

  gn = has(r"_gn_s$")
  box_convs = _count(names, r"^head_conv(\d+)_w$")
  box_head = ("fast_rcnn_heads.add_roi_Xconv1fc_gn_head" if box_convs and has(r"^head_conv1_gn_s$")
              else "fast_rcnn_heads.add_roi_Xconv1fc_head" if box_convs
              else "fast_rcnn_heads.add_roi_2mlp_head")
  mask_convs = max(_count(names, r"^_mask_fcn(\d+)_w$"), _count(names, r"^_\[mask\]_fcn(\d+)_w$"))
  mask_head = (f"mask_rcnn_heads.mask_rcnn_fcn_head_v1up{mask_convs}convs"
               + ("_gn" if "_mask_fcn1_gn_s" in tensors else ""))
  stem = tensors.get("conv1_w")
  width = tensors.get("res2_0_branch2a_w")
  groups_in = tensors.get("res2_0_branch2b_w")
  if stem is None or width is None or groups_in is None:
    raise SpecError("the checkpoint has no Detectron ResNet stem and res2 "
                    "(conv1_w, res2_0_branch2a_w, res2_0_branch2b_w)")
  groups = width.shape[0] // groups_in.shape[1]
  return _merge(DETECTRON_DEFAULTS, {
      "MODEL": {"TYPE": "generalized_rcnn", "FASTER_RCNN": True,
                "MASK_ON": "mask_fcn_logits_w" in tensors},
      "RESNETS": {"TRANS_FUNC": "bottleneck_gn_transformation" if gn
                  else "bottleneck_transformation", "STRIDE_1X1": False,
                  "NUM_GROUPS": groups,
                  "WIDTH_PER_GROUP": width.shape[0] // groups},
      "FPN": {"FPN_ON": True, "MULTILEVEL_ROIS": True, "MULTILEVEL_RPN": True,
              "USE_GN": any(n.startswith("fpn_") and n.endswith("_gn_s") for n in names),
              "DIM": tensors["conv_rpn_fpn2_w"].shape[0] if "conv_rpn_fpn2_w" in tensors
              else 256},
      "FAST_RCNN": {"ROI_BOX_HEAD": box_head, "ROI_XFORM_METHOD": "RoIAlign",
                    "ROI_XFORM_RESOLUTION": 7, "ROI_XFORM_SAMPLING_RATIO": 2,
                    "NUM_STACKED_CONVS": box_convs or 4,
                    "CONV_HEAD_DIM": tensors["head_conv1_w"].shape[0] if box_convs else 256,
                    "MLP_HEAD_DIM": tensors["fc6_w"].shape[0] if "fc6_w" in tensors
                    else 1024},
      "MRCNN": {"ROI_MASK_HEAD": mask_head, "RESOLUTION": 28, "ROI_XFORM_RESOLUTION": 14,
                "ROI_XFORM_SAMPLING_RATIO": 2, "DILATION": 1,
                "DIM_REDUCED": tensors["conv5_mask_w"].shape[1] if "conv5_mask_w" in tensors
                else 256},
      "TEST": {"SCALE": 800, "MAX_SIZE": 1333, "NMS": 0.5, "RPN_PRE_NMS_TOP_N": 1000,
               "RPN_POST_NMS_TOP_N": 1000}})
