"""detectron2's and Detectron's configs read as `DetectorSpec`s: which config key (or, where
the config is silent, which tensor of the weights) decides each `build_model` and `InputConfig`
binding. The config reading, the defaults and the architecture inferred from the weights are
`detector_configs.py`.
"""

import re
from typing import Dict

import numpy as np

from rethink_tf.checkpoint.detector_configs import (
    DetectorSpec,
    SpecError,
    config_value,
    depth_of,
    infer_block_counts,
    require_choice,
)
from rethink_tf.modeling.backbone.resnet import BLOCK_COUNTS

# ---------------------------------------------------------------------------------------------
# detectron2.

_D2_NORMS = {
    "GN": "GN", "SyncBN": "SyncBN", "BN": "BN", "FrozenBN": "FrozenBN", "": None,
    "naiveSyncBN": "SyncBN"
}


def _pooler(cfg, head: str, path: str, out: dict, prefix: str):
  kind = require_choice(cfg, f"MODEL.{head}.POOLER_TYPE", ("ROIAlignV2", "ROIAlign"), path)
  out[f"{prefix}_pool_size"] = int(config_value(cfg, f"MODEL.{head}.POOLER_RESOLUTION"))
  out[f"{prefix}_sampling_ratio"] = int(config_value(cfg, f"MODEL.{head}.POOLER_SAMPLING_RATIO"))
  return kind == "ROIAlignV2"


def detectron2_spec(cfg: dict, tensors: Dict[str, np.ndarray], path: str) -> DetectorSpec:
  """The bindings of a detectron2 GeneralizedRCNN with a ResNet-FPN backbone."""
  m = {}
  require_choice(cfg, "MODEL.META_ARCHITECTURE", ("GeneralizedRCNN",), path)
  require_choice(cfg, "MODEL.BACKBONE.NAME", lambda v: "resnet_fpn" in str(v), path)
  require_choice(cfg, "MODEL.PROPOSAL_GENERATOR.NAME", ("RPN",), path)
  require_choice(cfg, "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", (0,), path)
  require_choice(cfg, "MODEL.ANCHOR_GENERATOR.NAME", ("DefaultAnchorGenerator",), path)
  require_choice(cfg, "MODEL.RPN.HEAD_NAME", ("StandardRPNHead",), path)
  require_choice(cfg, "MODEL.RPN.CONV_DIMS", lambda v: list(v) == [-1], path)
  require_choice(cfg, "MODEL.RPN.BBOX_REG_WEIGHTS", lambda v: list(v) == [1, 1, 1, 1], path)
  require_choice(cfg, "MODEL.RPN.IN_FEATURES", lambda v: list(v) == ["p2", "p3", "p4", "p5", "p6"],
                 path)
  roi_heads = require_choice(cfg, "MODEL.ROI_HEADS.NAME", ("StandardROIHeads", "CascadeROIHeads"),
                             path)
  require_choice(cfg, "MODEL.ROI_HEADS.IN_FEATURES", lambda v: list(v) == ["p2", "p3", "p4", "p5"],
                 path)
  require_choice(cfg, "MODEL.FPN.FUSE_TYPE", ("sum",), path)
  require_choice(cfg, "MODEL.FPN.IN_FEATURES",
                 lambda v: list(v) == ["res2", "res3", "res4", "res5"], path)
  require_choice(cfg, "MODEL.RESNETS.RES5_DILATION", (1,), path)
  require_choice(cfg, "MODEL.RESNETS.DEFORM_ON_PER_STAGE", lambda v: not any(v), path)
  norm = _D2_NORMS[require_choice(cfg, "MODEL.RESNETS.NORM", tuple(_D2_NORMS), path)]
  fpn_norm = _D2_NORMS[require_choice(cfg, "MODEL.FPN.NORM", tuple(_D2_NORMS), path)]
  box_norm = _D2_NORMS[require_choice(cfg, "MODEL.ROI_BOX_HEAD.NORM", tuple(_D2_NORMS), path)]
  require_choice(cfg, "MODEL.ROI_BOX_HEAD.NAME", ("FastRCNNConvFCHead",), path)
  require_choice(cfg, "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", (False,), path)

  rn = config_value(cfg, "MODEL.RESNETS")
  counts = rn.get("NUM_BLOCKS_PER_STAGE")
  if counts is None:
    depth = require_choice(cfg, "MODEL.RESNETS.DEPTH", tuple(BLOCK_COUNTS), path)
    counts = list(BLOCK_COUNTS[depth])
  counts = [int(c) for c in counts]
  multiplier = rn["RES2_OUT_CHANNELS"] / 256.0
  if rn["STEM_OUT_CHANNELS"] != int(64 * multiplier):
    raise SpecError(f"{path}: MODEL.RESNETS.STEM_OUT_CHANNELS = {rn['STEM_OUT_CHANNELS']} with "
                    f"RES2_OUT_CHANNELS = {rn['RES2_OUT_CHANNELS']} is not supported (the stem "
                    "has a quarter of res2's channels here)")
  m.update(backbone="resnet",
           use_fpn=True,
           norm=norm,
           fpn_norm=fpn_norm,
           head_norm=box_norm,
           depth=depth_of(counts) or 50,
           block_counts=counts,
           groups=int(rn["NUM_GROUPS"]),
           width_per_group=int(round(rn["WIDTH_PER_GROUP"] / multiplier)),
           width_multiplier=multiplier,
           stride_in_1x1=bool(rn["STRIDE_IN_1X1"]),
           fpn_channels=int(config_value(cfg, "MODEL.FPN.OUT_CHANNELS")),
           freeze_at=0)

  ag = config_value(cfg, "MODEL.ANCHOR_GENERATOR")
  sizes = [list(s) for s in ag["SIZES"]]
  if len(sizes) != 5 or any(len(s) != 1 for s in sizes):
    raise SpecError(f"{path}: MODEL.ANCHOR_GENERATOR.SIZES = {ag['SIZES']} is not supported "
                    "(one size per level P2..P6)")
  per_stride = [s[0] / 2.0**(l + 2) for l, s in enumerate(sizes)]
  if len(set(per_stride)) != 1:
    raise SpecError(f"{path}: MODEL.ANCHOR_GENERATOR.SIZES = {ag['SIZES']} is not supported "
                    "(sizes must be a constant multiple of the level's stride)")
  ratios = ag["ASPECT_RATIOS"]
  ratios = ratios[0] if isinstance(ratios[0], (list, tuple)) else ratios
  if any(list(r) != list(ratios) for r in ag["ASPECT_RATIOS"] if isinstance(r, (list, tuple))):
    raise SpecError(f"{path}: MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS must be the same on every "
                    "level")
  # detectron2's ratios are height / width, ours width / height: same anchors, same order.
  m.update(anchor_size=per_stride[0],
           aspect_ratios=tuple(1.0 / float(r) for r in ratios),
           anchor_offset=float(ag["OFFSET"]))

  rpn = config_value(cfg, "MODEL.RPN")
  m.update(rpn_pre_nms_topk_train=int(rpn["PRE_NMS_TOPK_TRAIN"]),
           rpn_post_nms_topk_train=int(rpn["POST_NMS_TOPK_TRAIN"]),
           rpn_pre_nms_topk_test=int(rpn["PRE_NMS_TOPK_TEST"]),
           rpn_post_nms_topk_test=int(rpn["POST_NMS_TOPK_TEST"]),
           rpn_nms_threshold=float(rpn["NMS_THRESH"]))

  rh = config_value(cfg, "MODEL.ROI_HEADS")
  m.update(roi_samples_per_image=int(rh["BATCH_SIZE_PER_IMAGE"]),
           roi_positive_fraction=float(rh["POSITIVE_FRACTION"]),
           score_threshold=float(rh["SCORE_THRESH_TEST"]),
           nms_threshold=float(rh["NMS_THRESH_TEST"]),
           detections_per_image=int(config_value(cfg, "TEST.DETECTIONS_PER_IMAGE")))

  bh = config_value(cfg, "MODEL.ROI_BOX_HEAD")
  if bh["NUM_CONV"] > 0 and bh["NUM_FC"] == 1:
    m.update(box_head_type="4conv1fc",
             box_head_num_conv=int(bh["NUM_CONV"]),
             head_conv_dim=int(bh["CONV_DIM"]))
  elif bh["NUM_CONV"] == 0 and bh["NUM_FC"] == 2:
    m.update(box_head_type="2fc")
  else:
    raise SpecError(f"{path}: MODEL.ROI_BOX_HEAD with NUM_CONV = {bh['NUM_CONV']} and NUM_FC = "
                    f"{bh['NUM_FC']} is not supported (N convs + 1 fc, or 0 convs + 2 fc)")
  m["head_fc_dim"] = int(bh["FC_DIM"])
  aligned = _pooler(cfg, "ROI_BOX_HEAD", path, m, "box")
  if roi_heads == "CascadeROIHeads":
    ch = config_value(cfg, "MODEL.ROI_BOX_CASCADE_HEAD")
    m.update(cascade_ious=tuple(float(v) for v in ch["IOUS"]),
             cascade_box_weights=tuple(tuple(float(x) for x in w) for w in ch["BBOX_REG_WEIGHTS"]))
  else:
    require_choice(cfg, "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", lambda v: list(v) == [10, 10, 5, 5],
                   path)
    m["class_agnostic_box_regression"] = bool(bh["CLS_AGNOSTIC_BBOX_REG"])

  m["mask_on"] = bool(config_value(cfg, "MODEL.MASK_ON"))
  if m["mask_on"]:
    mh = config_value(cfg, "MODEL.ROI_MASK_HEAD")
    require_choice(cfg, "MODEL.ROI_MASK_HEAD.NAME", ("MaskRCNNConvUpsampleHead",), path)
    require_choice(cfg, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", (False,), path)
    if _D2_NORMS.get(mh["NORM"], "?") != box_norm:
      raise SpecError(f"{path}: MODEL.ROI_MASK_HEAD.NORM = {mh['NORM']!r} differs from "
                      f"MODEL.ROI_BOX_HEAD.NORM = {bh['NORM']!r}: the heads share one norm here")
    m.update(mask_head_num_conv=int(mh["NUM_CONV"]), mask_head_conv_dim=int(mh["CONV_DIM"]))
    if _pooler(cfg, "ROI_MASK_HEAD", path, m, "mask") != aligned:
      raise SpecError(f"{path}: the box and mask heads' POOLER_TYPE differ")
  if config_value(cfg, "MODEL.KEYPOINT_ON"):
    kh = config_value(cfg, "MODEL.ROI_KEYPOINT_HEAD")
    require_choice(cfg, "MODEL.ROI_KEYPOINT_HEAD.NAME", ("KRCNNConvDeconvUpsampleHead",), path)
    dims = require_choice(cfg, "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
                          lambda v: len(v) > 0 and len(set(v)) == 1, path)
    m.update(num_keypoints=int(kh["NUM_KEYPOINTS"]),
             keypoint_head_conv_dim=int(dims[0]),
             keypoint_head_num_conv=len(dims),
             keypoint_head_norm=None)
    if _pooler(cfg, "ROI_KEYPOINT_HEAD", path, m, "keypoint") != aligned:
      raise SpecError(f"{path}: the box and keypoint heads' POOLER_TYPE differ")
  m.update(roi_align_aligned=aligned, roi_level_epsilon=1e-8)

  fmt_in = require_choice(cfg, "INPUT.FORMAT", ("BGR", "RGB"), path)
  inputs = _test_size(int(config_value(cfg, "INPUT.MIN_SIZE_TEST")),
                      int(config_value(cfg, "INPUT.MAX_SIZE_TEST")))
  # detectron2 resizes uint8 images with PIL's bilinear filter (antialiased when shrinking,
  # rounded to uint8) and its own size rule; evaluation pads each batch to its largest image
  # rounded up to 32 (the default `eval_canvas`), as its `ImageList.from_tensors`.
  inputs.update(channel_order=fmt_in,
                resize_method="pil",
                pixel_mean=tuple(float(v) for v in config_value(cfg, "MODEL.PIXEL_MEAN")),
                pixel_std=tuple(float(v) for v in config_value(cfg, "MODEL.PIXEL_STD")))
  return DetectorSpec("detectron2", m, inputs, int(rh["NUM_CLASSES"]), counts, [2, 3, 4, 5])


def _test_size(short: int, long: int) -> dict:
  """InputConfig's test-time resize: the padded canvas holds the largest resized image."""
  side = -(-long // 32) * 32
  return dict(
      short_side=short,
      max_long_side=long,
      padded_size=(side, side),
      # PIL (detectron2) and OpenCV (Detectron) decode JPEGs with libjpeg's accurate
      # IDCT; TensorFlow's default is the fast one.
      jpeg_dct_method="INTEGER_ACCURATE")


# ---------------------------------------------------------------------------------------------
# Detectron.

_DETECTRON_BODIES = {
    "FPN.add_fpn_ResNet50_conv5_body": 50, "FPN.add_fpn_ResNet101_conv5_body": 101,
    "FPN.add_fpn_ResNet152_conv5_body": 152
}
_DETECTRON_BOX_HEADS = ("fast_rcnn_heads.add_roi_Xconv1fc_gn_head",
                        "fast_rcnn_heads.add_roi_Xconv1fc_head",
                        "fast_rcnn_heads.add_roi_2mlp_head")
# mask_rcnn_heads.mask_rcnn_fcn_head_v1up (2 convs), _v1up4convs[_gn]; N convs other than 4
# are Detectron's mask_rcnn_fcn_head_v1upXconvs[_gn] with num_convs = N.
_DETECTRON_MASK_HEAD = re.compile(r"mask_rcnn_heads\.mask_rcnn_fcn_head_v1up(?:(\d+)convs)?(_gn)?$")


def detectron_spec(cfg: dict, tensors: Dict[str, np.ndarray], path: str) -> DetectorSpec:
  """The bindings of a Detectron (Caffe2) generalized_rcnn with an FPN ResNet body."""
  m = {}
  require_choice(cfg, "MODEL.TYPE", ("generalized_rcnn",), path)
  body = config_value(cfg, "MODEL.CONV_BODY")
  counts = infer_block_counts(tensors, "detectron")
  if body:
    depth = require_choice(cfg, "MODEL.CONV_BODY", tuple(_DETECTRON_BODIES), path)
    if list(BLOCK_COUNTS[_DETECTRON_BODIES[depth]]) != counts:
      raise SpecError(f"{path}: MODEL.CONV_BODY = {depth!r} but the weights have "
                      f"{counts} blocks per stage")
  require_choice(cfg, "FPN.EXTRA_CONV_LEVELS", (False,), path)
  require_choice(cfg, "RESNETS.RES5_DILATION", (1,), path)
  if config_value(cfg, "MODEL.MASK_ON"):
    require_choice(cfg, "MRCNN.DILATION", (1,), path)
  if config_value(cfg, "MODEL.KEYPOINTS_ON"):
    raise SpecError(f"{path}: MODEL.KEYPOINTS_ON: Detectron's keypoint head (its fixed "
                    "bilinear upsampling layer) is not supported; convert detectron2 keypoint "
                    "models instead")
  gn = require_choice(cfg, "RESNETS.TRANS_FUNC",
                      ("bottleneck_gn_transformation", "bottleneck_transformation"),
                      path) == "bottleneck_gn_transformation"
  fpn_gn = bool(config_value(cfg, "FPN.USE_GN"))
  head = require_choice(cfg, "FAST_RCNN.ROI_BOX_HEAD", _DETECTRON_BOX_HEADS, path)
  groups = int(config_value(cfg, "RESNETS.NUM_GROUPS"))
  width = int(config_value(cfg, "RESNETS.WIDTH_PER_GROUP"))
  stem = tensors.get("conv1_w")
  multiplier = 1.0 if stem is None else stem.shape[0] / 64.0
  m.update(backbone="resnet",
           use_fpn=True,
           norm="GN" if gn else "FrozenBN",
           fpn_norm="GN" if fpn_gn else None,
           depth=depth_of(counts) or 50,
           block_counts=counts,
           groups=groups,
           width_per_group=int(round(width / multiplier)),
           width_multiplier=multiplier,
           stride_in_1x1=bool(config_value(cfg, "RESNETS.STRIDE_1X1")),
           fpn_channels=int(config_value(cfg, "FPN.DIM")),
           freeze_at=0,
           gn_num_groups=int(config_value(cfg, "GROUP_NORM.NUM_GROUPS")))
  if config_value(cfg, "GROUP_NORM.DIM_PER_GP") != -1:
    raise SpecError(f"{path}: GROUP_NORM.DIM_PER_GP is not supported (GN with NUM_GROUPS)")
  fr = config_value(cfg, "FAST_RCNN")
  if head == "fast_rcnn_heads.add_roi_2mlp_head":
    m.update(box_head_type="2fc", head_norm=None)
  else:
    m.update(box_head_type="4conv1fc",
             box_head_num_conv=int(fr["NUM_STACKED_CONVS"]),
             head_conv_dim=int(fr["CONV_HEAD_DIM"]),
             head_norm="GN" if head.endswith("_gn_head") else None)
  m["head_fc_dim"] = int(fr["MLP_HEAD_DIM"])
  require_choice(cfg, "FAST_RCNN.ROI_XFORM_METHOD", ("RoIAlign",), path)
  m.update(box_pool_size=int(fr["ROI_XFORM_RESOLUTION"]),
           box_sampling_ratio=int(fr["ROI_XFORM_SAMPLING_RATIO"]))
  require_choice(cfg, "MODEL.BBOX_REG_WEIGHTS", lambda v: list(v) == [10, 10, 5, 5], path)
  m["class_agnostic_box_regression"] = bool(config_value(cfg, "MODEL.CLS_AGNOSTIC_BBOX_REG"))
  m["mask_on"] = bool(config_value(cfg, "MODEL.MASK_ON"))
  if m["mask_on"]:
    mr = config_value(cfg, "MRCNN")
    mask_head = require_choice(cfg, "MRCNN.ROI_MASK_HEAD",
                               lambda v: bool(_DETECTRON_MASK_HEAD.match(str(v))), path)
    convs, gn_mask = _DETECTRON_MASK_HEAD.match(mask_head).groups()
    require_choice(cfg, "MRCNN.ROI_XFORM_METHOD", ("RoIAlign",), path)
    require_choice(cfg, "MRCNN.CLS_SPECIFIC_MASK", (True,), path)
    require_choice(cfg, "MRCNN.UPSAMPLE_RATIO", (1,), path)
    require_choice(cfg, "MRCNN.USE_FC_OUTPUT", (False,), path)
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
  fpn = config_value(cfg, "FPN")
  if (fpn["RPN_MIN_LEVEL"], fpn["RPN_MAX_LEVEL"], fpn["ROI_MIN_LEVEL"],
      fpn["ROI_MAX_LEVEL"]) != (2, 6, 2, 5):
    raise SpecError(f"{path}: FPN levels other than RPN P2-P6 and RoI P2-P5 are not supported")
  m.update(anchor_size=float(fpn["RPN_ANCHOR_START_SIZE"]) / 4.0,
           aspect_ratios=tuple(1.0 / float(r) for r in fpn["RPN_ASPECT_RATIOS"]),
           box_plus_one=True,
           roi_align_aligned=False,
           roi_level_epsilon=1e-6)
  te, tr = config_value(cfg, "TEST"), config_value(cfg, "TRAIN")
  require_choice(cfg, "TEST.RPN_MIN_SIZE", (0,), path)
  m.update(rpn_pre_nms_topk_test=int(te["RPN_PRE_NMS_TOP_N"]),
           rpn_post_nms_topk_test=int(te["RPN_POST_NMS_TOP_N"]),
           rpn_pre_nms_topk_train=int(tr["RPN_PRE_NMS_TOP_N"]),
           rpn_post_nms_topk_train=int(tr["RPN_POST_NMS_TOP_N"]),
           rpn_nms_threshold=float(te["RPN_NMS_THRESH"]),
           roi_samples_per_image=int(tr["BATCH_SIZE_PER_IM"]),
           roi_positive_fraction=float(tr["FG_FRACTION"]),
           score_threshold=float(te["SCORE_THRESH"]),
           nms_threshold=float(te["NMS"]),
           detections_per_image=int(te["DETECTIONS_PER_IM"]))
  mean = np.asarray(config_value(cfg, "PIXEL_MEANS"), np.float64).reshape(-1)
  inputs = _test_size(int(te["SCALE"]), int(te["MAX_SIZE"]))
  # Detectron resizes the float image by one factor with OpenCV (`utils/blob.py`).
  inputs.update(channel_order="BGR",
                resize_method="opencv",
                pixel_mean=tuple(float(v) for v in mean),
                pixel_std=(1.0, 1.0, 1.0))
  num_classes = int(config_value(cfg, "MODEL.NUM_CLASSES"))
  if num_classes < 2:
    score = tensors.get("cls_score_w")
    if score is None:
      raise SpecError(f"{path}: MODEL.NUM_CLASSES is not set and the weights have no "
                      "cls_score_w")
    num_classes = score.shape[0]
  return DetectorSpec("detectron", m, inputs, num_classes - 1, counts, [2, 3, 4, 5])
