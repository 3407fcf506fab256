"""The one gin-facing model builder: one `norm` value reaches every block.

`backbone="resnet"` with `use_fpn=True` and `mask_on=True` is the paper's Mask R-CNN FPN;
`backbone="vgg16"` with `use_fpn=False` and `mask_on=False` is the original Faster R-CNN on
conv5 (the paper's no-normalization experiment).
"""

import dataclasses
import inspect
from typing import Any, Dict, Optional, Sequence

import gin

from rethink_tf.errors import ConfigError
from rethink_tf.modeling.backbone import registry as backbone_lib
from rethink_tf.modeling.backbone import resnet, vgg  # noqa: F401 (their registrations)
from rethink_tf.modeling.fpn import FPN
from rethink_tf.modeling.mask_rcnn import MaskRCNN
from rethink_tf.modeling.roi_heads.box import BoxHead, BoxPredictor
from rethink_tf.modeling.roi_heads.cascade import CASCADE_BOX_WEIGHTS, CascadeRoIHeads
from rethink_tf.modeling.roi_heads.keypoint import KeypointHead
from rethink_tf.modeling.roi_heads.mask import MaskHead
from rethink_tf.modeling.roi_heads.sampling import ROI_BOX_WEIGHTS
from rethink_tf.modeling.roi_heads.standard import RoIHeads
from rethink_tf.modeling.rpn import RPNHead


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
                cascade_start_step: int = 0,
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
  `cascade_start_step`: stages 2.. train (and take part in inference) from this training step
  on; before it the model trains and evaluates as its stage 1 (the paper's X152 recipe adds
  cascade for the last 270k iterations). A model without cascade stages refuses it.

  This is the gin edge: the defaults live here only; the parts below take every setting
  explicitly. A new RoI head is a `RoIBranch` module and its line in `branches` below; a new
  backbone is a module in `modeling/backbone/` that registers itself, imported above.

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
  if backbone not in backbone_lib.names():
    raise ValueError(f"build_model.backbone {backbone!r} is not one of {backbone_lib.names()}")
  if fpn_norm == "same":
    fpn_norm = norm
  if head_norm == "same":
    head_norm = norm
  if keypoint_head_norm == "same":
    keypoint_head_norm = head_norm
  if box_plus_one and cascade_ious:
    raise ValueError("build_model.box_plus_one (Detectron's box convention) has no Cascade "
                     "R-CNN: Detectron has none; leave cascade_ious empty")
  if len(cascade_ious) == 1:
    raise ValueError("build_model.cascade_ious needs one IoU per stage and at least 2 stages "
                     f"(got {tuple(cascade_ious)}); leave it empty for the plain box head")
  if cascade_start_step and not cascade_ious:
    raise ConfigError(
        f"build_model.cascade_start_step = {cascade_start_step} but the model has no cascade "
        "stages: bind build_model.cascade_ious = (0.5, 0.6, 0.7)")
  kw: Dict[str, Any] = dict(gn_num_groups=gn_num_groups)
  body = backbone_lib.build(
      backbone,
      backbone_lib.BackboneSettings(norm=norm,
                                    gn_num_groups=gn_num_groups,
                                    freeze_at=freeze_at,
                                    width_multiplier=width_multiplier,
                                    depth=depth,
                                    groups=groups,
                                    width_per_group=width_per_group,
                                    block_counts=block_counts,
                                    stride_in_1x1=stride_in_1x1))
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

  def box_head(name):
    return BoxHead(box_head_type,
                   head_conv_dim,
                   head_fc_dim,
                   norm=head_norm,
                   num_conv=box_head_num_conv,
                   name=name,
                   **kw)

  cascade = bool(cascade_ious)
  box_predictor = BoxPredictor(num_classes,
                               class_agnostic=cascade or class_agnostic_box_regression,
                               name="box_predictor")
  # The branches beside the box head, in the order they run (and their losses are listed).
  branches = []
  if mask_on:
    branches.append(
        MaskHead(num_classes,
                 mask_head_conv_dim or head_conv_dim,
                 mask_head_num_conv,
                 norm=head_norm,
                 pool_size=mask_pool_size,
                 sampling_ratio=mask_sampling_ratio,
                 name="mask_head",
                 **kw))
  if num_keypoints:
    branches.append(
        KeypointHead(num_keypoints,
                     keypoint_head_conv_dim,
                     keypoint_head_num_conv,
                     norm=keypoint_head_norm,
                     pool_size=keypoint_pool_size,
                     sampling_ratio=keypoint_sampling_ratio,
                     name="keypoint_head",
                     **kw))
  plus_one = 1.0 if box_plus_one else 0.0
  heads_kwargs: Dict[str, Any] = dict(roi_levels=list(range(min_level,
                                                            min(max_level, 5) + 1)),
                                      samples_per_image=roi_samples_per_image,
                                      positive_fraction=roi_positive_fraction,
                                      branch_rois_per_image=mask_rois_per_image,
                                      box_pooler=(box_pool_size, box_sampling_ratio),
                                      pooler_kwargs=dict(aligned=roi_align_aligned,
                                                         level_epsilon=roi_level_epsilon,
                                                         box_plus_one=plus_one,
                                                         max_adaptive_samples=max_adaptive_samples),
                                      box_plus_one=plus_one,
                                      roi_chunk_mb=roi_chunk_mb,
                                      name="roi_heads")
  if cascade:
    later = [(box_head(f"box_head_stage{k + 1}"),
              BoxPredictor(num_classes, class_agnostic=True, name=f"box_predictor_stage{k + 1}"))
             for k in range(1, len(cascade_ious))]
    roi_heads = CascadeRoIHeads(box_head("box_head"),
                                box_predictor,
                                branches,
                                later_stages=later,
                                stage_ious=tuple(cascade_ious),
                                stage_box_weights=cascade_box_weights,
                                start_step=cascade_start_step,
                                **heads_kwargs)
  else:
    roi_heads = RoIHeads(box_head("box_head"),
                         box_predictor,
                         branches,
                         fg_iou=0.5,
                         box_weights=ROI_BOX_WEIGHTS,
                         **heads_kwargs)
  return MaskRCNN(body,
                  fpn,
                  rpn,
                  roi_heads,
                  num_classes=num_classes,
                  image_size=image_size,
                  min_level=min_level,
                  max_level=max_level,
                  aspect_ratios=aspect_ratios,
                  anchor_size=anchor_size,
                  anchor_scales=anchor_scales,
                  anchor_offset=anchor_offset,
                  rpn_topk_train=(rpn_pre_nms_topk_train, rpn_post_nms_topk_train),
                  rpn_topk_test=(rpn_pre_nms_topk_test, rpn_post_nms_topk_test),
                  rpn_nms_threshold=rpn_nms_threshold,
                  box_plus_one=box_plus_one,
                  detections_per_image=detections_per_image,
                  score_threshold=score_threshold,
                  nms_threshold=nms_threshold)


def build_backbone() -> backbone_lib.Backbone:
  """The backbone `build_model` builds under the current gin bindings, alone (pre-training
  trains it as a classifier, so its checkpoint fits the detector)."""
  settings = {k: p.default for k, p in inspect.signature(build_model).parameters.items()}
  settings.update(gin.get_bindings("build_model"))
  fields = [f.name for f in dataclasses.fields(backbone_lib.BackboneSettings)]
  return backbone_lib.build(settings["backbone"],
                            backbone_lib.BackboneSettings(**{k: settings[k] for k in fields}))
