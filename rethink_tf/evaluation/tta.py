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
  max_long_side: the long-side cap of the extra scales (TEST.BBOX_AUG.MAX_SIZE); None scales
    `InputConfig.max_long_side` with the short side.
  flip: also run every scale flipped (H_FLIP and SCALE_H_FLIP).
  """

  __test__ = False  # not a pytest class

  def __init__(self, scales: Sequence[int] = (), max_long_side: Optional[int] = None,
               flip: bool = True):
    self.scales = tuple(int(s) for s in scales)
    self.max_long_side = max_long_side
    self.flip = flip

  def input_configs(self, cfg: InputConfig, size_divisor: int) -> List[InputConfig]:
    """One evaluation input config per scale, the base scale first; each pads to a square
    multiple of size_divisor that holds its resized images."""
    configs = [cfg]
    for short in self.scales:
      if short == cfg.short_side:
        continue
      c = copy.copy(cfg)
      c.short_side = short
      c.max_long_side = self.max_long_side or int(round(cfg.max_long_side * short /
                                                        cfg.short_side))
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
  valid_w = tf.cast(image_size[:, 1], tf.int32)[:, None]                   # [B, 1]
  x = tf.range(width)[None, :]
  index = tf.where(x < valid_w, valid_w - 1 - x, x)                        # [B, W]
  return tf.gather(images, index, axis=2, batch_dims=1)


def flip_boxes(boxes, image_width):
  """Mirrors yxyx boxes [B, ..., 4] in images of width image_width [B]."""
  w = tf.reshape(tf.cast(image_width, boxes.dtype), [-1] + [1] * (boxes.shape.rank - 1))
  y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
  return tf.stack([y1, w[..., 0] - x2, y2, w[..., 0] - x1], axis=-1)


def _scale(x, scale):
  """Multiplies [B, ...] by a per-image scale [B]."""
  return x * tf.reshape(tf.cast(scale, x.dtype), [-1] + [1] * (x.shape.rank - 1))


def detect_tta(model, batches: Sequence[Dict[str, tf.Tensor]],
               augmentations: Sequence[Tuple[int, bool]]) -> Dict[str, tf.Tensor]:
  """Detections of the same images seen at several scales (one evaluation batch per scale).

  Args:
    batches: evaluation batches of the same images, one per scale (images [B, H_s, W_s, 3],
      image_size [B, 2], scale [B]: resized / input size).
    augmentations: (index into batches, flipped) pairs; the first one gives keypoints.
  Returns the dict of `MaskRCNN.detect`, but boxes and keypoints in *input-image* pixels.
  """
  feats, all_boxes, all_probs = [], [], []
  for i, flipped in augmentations:
    b = batches[i]
    image_size = tf.cast(b["image_size"], tf.float32)
    images = flip_images(b["images"], image_size) if flipped else b["images"]
    f = model.features(images, False)
    boxes, probs = model.box_predictions(f, image_size)              # [B, N, K-1, 4]
    if flipped:
      boxes = flip_boxes(boxes, image_size[:, 1])
    feats.append(f)
    all_boxes.append(_scale(boxes, 1.0 / b["scale"]))
    all_probs.append(probs)
  det = postprocess.nms_detections(tf.concat(all_boxes, 1), tf.concat(all_probs, 1),
                                   model.score_threshold, model.nms_threshold,
                                   model.detections_per_image)
  if model.mask_head is not None:
    masks = []
    for f, (i, flipped) in zip(feats, augmentations):
      b = batches[i]
      boxes = _scale(det["boxes"], b["scale"])
      if flipped:
        boxes = flip_boxes(boxes, tf.cast(b["image_size"], tf.float32)[:, 1])
      m = model.mask_probs(f, boxes, det["classes"])
      masks.append(tf.reverse(m, axis=[-1]) if flipped else m)
    det["masks"] = tf.add_n(masks) / len(masks)
  if model.keypoint_head is not None:
    i, _ = augmentations[0]
    boxes = _scale(det["boxes"], batches[i]["scale"])
    points = model.keypoint_points(feats[0], boxes)
    scale = tf.cast(batches[i]["scale"], tf.float32)[:, None, None]
    det["keypoints"] = tf.concat([points[..., :2] / scale[..., None], points[..., 2:]], -1)
  return det


def tta_detect_function(model):
  """`detect_tta` as one tf.function per model (traced once per set of batch shapes)."""
  fn = model.__dict__.get("_tta_function")
  if fn is None:
    fn = tf.function(lambda batches, augs: detect_tta(model, batches, augs))
    object.__setattr__(model, "_tta_function", fn)
  return fn
