"""The one gin-facing model builder: one `norm` value reaches every block.

`backbone="resnet"` with `use_fpn=True` and `mask_on=True` is the paper's Mask R-CNN FPN;
`backbone="vgg16"` with `use_fpn=False` and `mask_on=False` is the original Faster R-CNN on
conv5 (the paper's no-normalization experiment).
"""

from typing import Optional, Sequence

import gin

from rethink_tf.modeling.cascade import CASCADE_BOX_WEIGHTS
from rethink_tf.modeling.fpn import FPN
from rethink_tf.modeling.mask_rcnn import MaskRCNN
from rethink_tf.modeling.resnet import ResNet
from rethink_tf.modeling.roi_heads import BoxHead, BoxPredictor, KeypointHead, MaskHead
from rethink_tf.modeling.roi_sampling import ROI_BOX_WEIGHTS
from rethink_tf.modeling.rpn import RPNHead
from rethink_tf.modeling.vgg import VGG16

BACKBONES = ("resnet", "vgg16")


@gin.configurable
def build_model(num_classes: int = 81,
                image_size: Sequence[int] = (1344, 1344),
                backbone: str = "resnet",
                use_fpn: bool = True,
                mask_on: bool = True,
                norm: Optional[str] = "GN",
                gn_num_groups: int = 32,
                depth: int = 50,
                groups: int = 1,
                width_per_group: int = 64,
                width_multiplier: float = 1.0,
                block_counts: Optional[Sequence[int]] = None,
                freeze_at: int = 0,
                stride_in_1x1: bool = False,
                fpn_channels: int = 256,
                fpn_norm: Optional[str] = "same",
                box_head_type: str = "4conv1fc",
                head_conv_dim: int = 256,
                head_fc_dim: int = 1024,
                box_head_num_conv: int = 4,
                mask_head_num_conv: int = 4,
                mask_head_conv_dim: Optional[int] = None,
                anchor_size: float = 8.0,
                anchor_scales: Sequence[float] = (1.0,),
                aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                rpn_pre_nms_topk_train: int = 2000,
                rpn_post_nms_topk_train: int = 1000,
                rpn_pre_nms_topk_test: int = 1000,
                rpn_post_nms_topk_test: int = 1000,
                rpn_nms_threshold: float = 0.7,
                roi_samples_per_image: int = 512,
                roi_positive_fraction: float = 0.25,
                mask_rois_per_image: Optional[int] = None,
                detections_per_image: int = 100,
                score_threshold: float = 0.05,
                nms_threshold: float = 0.5,
                roi_chunk_mb: Optional[float] = 64.0,
                num_keypoints: int = 0,
                keypoint_head_conv_dim: int = 512,
                keypoint_head_num_conv: int = 8,
                cascade_ious: Sequence[float] = (),
                cascade_box_weights: Sequence[Sequence[float]] = CASCADE_BOX_WEIGHTS,
                head_norm: Optional[str] = "same",
                keypoint_head_norm: Optional[str] = "same",
                class_agnostic_box_regression: bool = False,
                box_pool_size: int = 7,
                mask_pool_size: int = 14,
                keypoint_pool_size: int = 14,
                box_sampling_ratio: int = 2,
                mask_sampling_ratio: int = 2,
                keypoint_sampling_ratio: int = 2,
                max_adaptive_samples: int = 4,
                roi_align_aligned: bool = True,
                roi_level_epsilon: Optional[float] = None,
                anchor_offset: float = 0.5,
                box_plus_one: bool = False) -> MaskRCNN:
  """Builds Mask R-CNN FPN. `num_classes` counts background (81 for COCO).

  `fpn_norm="same"` uses `norm` in the FPN too (the paper's GN models); pass None for
  Detectron's BN baselines whose FPN has no norm. The RPN never has a norm. Every argument is
  explicit (no **kwargs), so gin rejects a misspelled binding when it parses the file.
  Without FPN, the RPN has as many channels as the backbone output (512 on VGG-16 conv5, as
  Detectron) and `fpn_channels` is unused; anchors are `anchor_size * anchor_scales * stride`.
  `roi_chunk_mb` bounds the RoIAlign sample tensors of inference (see `multilevel_roi_align`).
  `num_keypoints` > 0 adds Keypoint R-CNN's head (17 for COCO persons).
  `cascade_ious` (e.g. (0.5, 0.6, 0.7)) makes the box head Cascade R-CNN's: one stage per IoU,
  each with its own box head (same architecture) and class-agnostic box predictor, stage k
  coding boxes with `cascade_box_weights[k]`; empty: the plain Mask R-CNN box head.

  Conventions of other implementations, each a binding whose default is this project's
  (docs/architecture.md names the source line each follows; `convert_detector` sets them):
  `mask_head_conv_dim` (None: `head_conv_dim`),
  `head_norm` / `keypoint_head_norm` ("same" = `norm`; detectron2 gives every head its own
  NORM and its keypoint head none), `class_agnostic_box_regression`, the RoIAlign of each head
  (`*_pool_size`, `*_sampling_ratio`: 0 = adaptive, at most `max_adaptive_samples` per bin and
  axis; `roi_align_aligned`: detectron2's ROIAlignV2 half-pixel shift, False for
  Detectron's RoIAlign), `roi_level_epsilon` (see `layers.roi_align.assign_levels`),
  `anchor_offset` (0.5: centres at (i + 0.5) * stride; detectron2's OFFSET 0.0),
  `box_plus_one` (Detectron's "+1" box widths, its rounded anchors and proposal filter;
  inference only).
  """
  if backbone not in BACKBONES:
    raise ValueError(f"build_model.backbone {backbone!r} is not one of {BACKBONES}")
  if fpn_norm == "same":
    fpn_norm = norm
  if head_norm == "same":
    head_norm = norm
  if keypoint_head_norm == "same":
    keypoint_head_norm = head_norm
  if box_plus_one and cascade_ious:
    raise ValueError("build_model.box_plus_one (Detectron's box convention) has no Cascade "
                     "R-CNN: Detectron has none; leave cascade_ious empty")
  kw = dict(gn_num_groups=gn_num_groups)
  if backbone == "resnet":
    body = ResNet(depth=depth,
                  groups=groups,
                  width_per_group=width_per_group,
                  norm=norm,
                  freeze_at=freeze_at,
                  width_multiplier=width_multiplier,
                  block_counts=block_counts,
                  stride_in_1x1=stride_in_1x1,
                  name="backbone",
                  **kw)
  else:
    body = VGG16(freeze_at=freeze_at, width_multiplier=width_multiplier, norm=norm, name="backbone")
  if use_fpn:
    fpn = FPN(fpn_channels, norm=fpn_norm, name="fpn", **kw)
    min_level, max_level, rpn_channels = 2, 6, fpn_channels
  else:
    if backbone != "vgg16":
      raise ValueError("use_fpn=False is the VGG-16 conv5 layout; a ResNet without FPN (C4 "
                       "head) is not implemented")
    fpn = None
    (level, rpn_channels), = body.out_channels.items()
    min_level = max_level = level
  rpn = RPNHead(rpn_channels, num_anchors=len(aspect_ratios) * len(anchor_scales), name="rpn")
  box_head = BoxHead(box_head_type,
                     head_conv_dim,
                     head_fc_dim,
                     norm=head_norm,
                     num_conv=box_head_num_conv,
                     name="box_head",
                     **kw)
  if len(cascade_ious) == 1:
    raise ValueError("build_model.cascade_ious needs one IoU per stage and at least 2 stages "
                     f"(got {tuple(cascade_ious)}); leave it empty for the plain box head")
  cascade = bool(cascade_ious)
  box_predictor = BoxPredictor(num_classes,
                               class_agnostic=cascade or class_agnostic_box_regression,
                               name="box_predictor")
  cascade_heads = [(BoxHead(box_head_type,
                            head_conv_dim,
                            head_fc_dim,
                            norm=head_norm,
                            num_conv=box_head_num_conv,
                            name=f"box_head_stage{k + 1}",
                            **kw),
                    BoxPredictor(num_classes,
                                 class_agnostic=True,
                                 name=f"box_predictor_stage{k + 1}"))
                   for k in range(1, len(cascade_ious))]
  mask_head = None
  if mask_on:
    mask_head = MaskHead(num_classes,
                         mask_head_conv_dim or head_conv_dim,
                         mask_head_num_conv,
                         norm=head_norm,
                         name="mask_head",
                         **kw)
  keypoint_head = None
  if num_keypoints:
    keypoint_head = KeypointHead(num_keypoints,
                                 keypoint_head_conv_dim,
                                 keypoint_head_num_conv,
                                 norm=keypoint_head_norm,
                                 name="keypoint_head",
                                 **kw)
  return MaskRCNN(body,
                  fpn,
                  rpn,
                  box_head,
                  box_predictor,
                  mask_head,
                  keypoint_head,
                  num_classes=num_classes,
                  image_size=image_size,
                  min_level=min_level,
                  max_level=max_level,
                  anchor_size=anchor_size,
                  anchor_scales=anchor_scales,
                  aspect_ratios=aspect_ratios,
                  rpn_pre_nms_topk_train=rpn_pre_nms_topk_train,
                  rpn_post_nms_topk_train=rpn_post_nms_topk_train,
                  rpn_pre_nms_topk_test=rpn_pre_nms_topk_test,
                  rpn_post_nms_topk_test=rpn_post_nms_topk_test,
                  rpn_nms_threshold=rpn_nms_threshold,
                  roi_samples_per_image=roi_samples_per_image,
                  roi_positive_fraction=roi_positive_fraction,
                  mask_rois_per_image=mask_rois_per_image,
                  detections_per_image=detections_per_image,
                  score_threshold=score_threshold,
                  nms_threshold=nms_threshold,
                  roi_chunk_mb=roi_chunk_mb,
                  box_pool_size=box_pool_size,
                  mask_pool_size=mask_pool_size,
                  keypoint_pool_size=keypoint_pool_size,
                  box_sampling_ratio=box_sampling_ratio,
                  mask_sampling_ratio=mask_sampling_ratio,
                  keypoint_sampling_ratio=keypoint_sampling_ratio,
                  max_adaptive_samples=max_adaptive_samples,
                  roi_align_aligned=roi_align_aligned,
                  roi_level_epsilon=roi_level_epsilon,
                  anchor_offset=anchor_offset,
                  box_plus_one=box_plus_one,
                  cascade_heads=cascade_heads,
                  cascade_ious=tuple(cascade_ious) or (0.5,),
                  cascade_box_weights=cascade_box_weights if cascade else (ROI_BOX_WEIGHTS,))
