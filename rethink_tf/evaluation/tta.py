"""Test-time augmentation: Detectron's `TEST.BBOX_AUG` and `TEST.MASK_AUG` (the paper's Table 3).

Each augmentation is a test scale (short side) with or without a horizontal flip. Boxes: every
augmentation's per-class boxes and scores of all its proposals, mapped back to the input image,
are pooled ("UNION" score and coordinate heuristics) and one per-class NMS keeps the
detections. Masks: every augmentation predicts the mask of each kept box (the box mapped into
its frame, the mask flipped back) and the probabilities are averaged ("SOFT_AVG") before the
usual 0.5 threshold. Keypoints (if any) come from the unflipped base scale alone. Detectron's
optional box voting is not implemented.
"""

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.modeling import postprocess


@gin.configurable
class TestTimeAugmentation:
  """Which augmentations to run. The base scale (`InputConfig.short_side`) always runs.

  scales: extra test short sides (Detectron's TEST.BBOX_AUG.SCALES).
  max_long_side: a cap on the long side of the extra scales (TEST.BBOX_AUG.MAX_SIZE); each
    scale's long side is at most `InputConfig.max_long_side` scaled with its short side (800 /
    1333 -> 1200 / 2000), and each pads to a square that holds it (static shapes).
  flip: also run every scale flipped (H_FLIP and SCALE_H_FLIP).
  """

  __test__ = False  # not a pytest class

  def __init__(self,
               scales: Sequence[int] = (),
               max_long_side: Optional[int] = None,
               flip: bool = True):
    self.scales = tuple(int(s) for s in scales)
    self.max_long_side = max_long_side
    self.flip = flip

  def input_configs(self, cfg: InputConfig, size_divisor: int) -> List[InputConfig]:
    """One evaluation input config per scale, the base scale first; each pads to a square
    multiple of size_divisor that holds its resized images (its canvas with
    `eval_canvas = "fixed"`; with "fit", its largest)."""
    configs = [cfg]
    for short in self.scales:
      if short == cfg.short_side:
        continue
      c = copy.copy(cfg)
      c.short_side = short
      c.max_long_side = int(round(cfg.max_long_side * short / cfg.short_side))
      if self.max_long_side:
        c.max_long_side = min(c.max_long_side, self.max_long_side)
      side = size_divisor * math.ceil(c.max_long_side / size_divisor)
      c.padded_size = (side, side)
      configs.append(c)
    return configs

  def augmentations(self, num_scales: int) -> List[Tuple[int, bool]]:
    """(scale index, flipped) pairs, the unflipped base scale first."""
    return [(i, f) for i in range(num_scales) for f in ((False, True) if self.flip else (False,))]


def flip_images(images, image_size):
  """Mirrors each image of [B, H, W, C] within its valid width image_size[:, 1]; the padding
  stays on the right."""
  width = images.shape[2]
  valid_w = tf.cast(image_size[:, 1], tf.int32)[:, None]  # [B, 1]
  x = tf.range(width)[None, :]
  index = tf.where(x < valid_w, valid_w - 1 - x, x)  # [B, W]
  return tf.gather(images, index, axis=2, batch_dims=1)


def flip_boxes(boxes, image_width):
  """Mirrors yxyx boxes [B, ..., 4] in images of width image_width [B]."""
  w = tf.reshape(tf.cast(image_width, boxes.dtype), [-1] + [1] * (boxes.shape.rank - 1))
  y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
  return tf.stack([y1, w[..., 0] - x2, y2, w[..., 0] - x1], axis=-1)


def _scale(boxes, scale):
  """Multiplies boxes [B, ..., 4] yxyx by a per-image (y, x) scale [B, 2]."""
  scale = tf.tile(tf.cast(scale, boxes.dtype), [1, 2])
  return boxes * tf.reshape(scale, [-1] + [1] * (boxes.shape.rank - 2) + [4])


def detect_tta(model, batches: Sequence[Dict[str, tf.Tensor]],
               augmentations: Sequence[Tuple[int, bool]]) -> Dict[str, tf.Tensor]:
  """Detections of the same images seen at several scales (one evaluation batch per scale).

  Like Detectron, the masks pass recomputes each augmentation's features instead of keeping
  all of them: memory stays that of one augmentation. Each step is a tf.function per model,
  traced once per scale and flip.

  Args:
    batches: evaluation batches of the same images, one per scale (images [B, H_s, W_s, 3],
      image_size [B, 2], scale [B]: resized / input size).
    augmentations: (index into batches, flipped) pairs; the first one gives keypoints.
  Returns the dict of `MaskRCNN.detect`, but boxes and keypoints in *input-image* pixels.
  """
  fns = _functions(model)
  boxes, probs = zip(*(fns["boxes"](batches[i], flipped) for i, flipped in augmentations))
  det = fns["nms"](tf.concat(boxes, 1), tf.concat(probs, 1))
  if model.roi_heads.branch("mask") is not None:
    masks = [
        fns["masks"](batches[i], flipped, det["boxes"], det["classes"])
        for i, flipped in augmentations
    ]
    det["masks"] = tf.add_n(masks) / len(masks)
  if model.roi_heads.branch("keypoint") is not None:
    i, flipped = augmentations[0]
    det["keypoints"] = fns["keypoints"](batches[i], flipped, det["boxes"])
  return det


def _functions(model):
  """The steps of `detect_tta` as tf.functions, created once per model."""
  fns = model.__dict__.get("_tta_functions")
  if fns is not None:
    return fns

  def features(batch, flipped):
    image_size = tf.cast(batch["image_size"], tf.float32)
    images = flip_images(batch["images"], image_size) if flipped else batch["images"]
    return model.features(images, False), image_size

  def to_frame(boxes, batch, flipped):
    """Input-image boxes [B, D, 4] -> the augmentation's frame."""
    boxes = _scale(boxes, batch["scale"])
    if flipped:
      boxes = flip_boxes(boxes, tf.cast(batch["image_size"], tf.float32)[:, 1])
    return boxes

  def aug_boxes(batch, flipped):
    feats, image_size = features(batch, flipped)
    boxes, probs = model.box_predictions(feats, image_size)  # [B, N, K-1, 4]
    if flipped:
      boxes = flip_boxes(boxes, image_size[:, 1])
    return _scale(boxes, 1.0 / batch["scale"]), probs

  def nms(boxes, probs):
    return postprocess.nms_detections(boxes, probs, model.score_threshold, model.nms_threshold,
                                      model.detections_per_image)

  def aug_masks(batch, flipped, boxes, classes):
    feats, _ = features(batch, flipped)
    masks = model.roi_heads.branch_outputs("mask", feats, to_frame(boxes, batch, flipped),
                                           classes)["masks"]
    return tf.reverse(masks, axis=[-1]) if flipped else masks  # box-relative, unflipped

  def aug_keypoints(batch, flipped, boxes):
    if flipped:
      raise ValueError("keypoints come from the first, unflipped augmentation")
    feats, _ = features(batch, False)
    points = model.roi_heads.branch_outputs("keypoint", feats, to_frame(boxes, batch,
                                                                        False))["keypoints"]
    scale_xy = tf.reverse(tf.cast(batch["scale"], tf.float32), [-1])[:, None, None, :]
    return tf.concat([points[..., :2] / scale_xy, points[..., 2:]], -1)

  fns = {
      "boxes": tf.function(aug_boxes), "nms": tf.function(nms), "masks": tf.function(aug_masks),
      "keypoints": tf.function(aug_keypoints)
  }
  # Not Keras-tracked (checkpoints and exports stay as they are).
  object.__setattr__(model, "_tta_functions", fns)
  return fns
