"""The RoI heads: everything Mask R-CNN runs per region (detectron2's `StandardROIHeads`).

One layer owns the per-RoI pipeline: it samples the training RoIs among the proposals, pools
them (RoIAlign per head), runs the box head with its losses, and passes the sampled
foreground RoIs to every branch beside it (`RoIBranch`: the mask head is one). Each branch
computes its own targets, losses and detections, so a new per-RoI head is a new `RoIBranch`
module plus its line in `modeling/build.py`; nothing here or in training names it. A subclass
may replace the box stage (`box_train_outputs`, `box_losses`, `box_predictions`) and add
step-driven behaviour (`set_step`, `steps_to_next_change`, `decay_groups`).

Static shapes throughout: S sampled RoIs per image, the first R of them (every foreground one)
for the branches, N proposals at inference.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from rethink_tf.layers.roi_align import multilevel_roi_align
from rethink_tf.modeling import postprocess
from rethink_tf.modeling.losses import Reducer
from rethink_tf.modeling.roi_heads import sampling
from rethink_tf.modeling.roi_heads.box import fast_rcnn_losses

# pool(feats, boxes [B, N, 4], pooler name, training) -> [B, N, S, S, C]
Pool = Callable[..., tf.Tensor]


class RoIBranch(tf_keras.layers.Layer):
  """A per-RoI head beside the box head, fed the sampled foreground RoIs in training and the
  detected boxes at inference.

  A subclass sets `kind` (the RoI heads keep it as `<kind>_head`, so its checkpoint path is
  `roi_heads/<kind>_head`) and `pooler` = (RoIAlign output size, samples per bin; 0 =
  adaptive), and implements the four methods below.
  """

  kind = ""
  pooler: Tuple[int, int] = (14, 2)

  def train_outputs(self, pool: Pool, feats, rois, sampled: Dict[str, tf.Tensor],
                    batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Raw outputs with their targets on rois [B, R, 4]; `sampled` holds classes, gt_index and
    is_fg [B, R] of those RoIs; `batch` the ground truth (gt_boxes [B, M, 4], ...)."""
    raise NotImplementedError

  def loss_names(self) -> List[str]:
    """The keys of `losses`, in its order."""
    raise NotImplementedError

  def losses(self, outputs: Dict[str, tf.Tensor], global_sum: Reducer) -> Dict[str, tf.Tensor]:
    """{name: scalar} from the outputs of `train_outputs` (see `modeling/losses.py`)."""
    raise NotImplementedError

  def predict(self, pool: Pool, feats, det: Dict[str, tf.Tensor],
              plus_one: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Detection keys this branch adds, for det's boxes [B, D, 4] (continuous coordinates;
    `det["boxes"] - plus_one` are Detectron's inclusive ones) and classes [B, D]."""
    raise NotImplementedError

  def check_data(self, input_config) -> None:
    """Raises ConfigError when the input pipeline's configuration cannot train this branch."""


class RoIHeads(tf_keras.layers.Layer):
  """RoI sampling, pooling, the box head and the branches.

  Args:
    box_head: [B, N, S, S, C] -> [B, N, D]; box_predictor: -> (logits [B, N, K], deltas
      [B, N, K or 1, 4]).
    branches: `RoIBranch`es, run in this order (their losses too).
    roi_levels: the FPN levels RoIs are pooled from.
    samples_per_image, positive_fraction: RoI sampling (S = samples_per_image).
    branch_rois_per_image: R, the RoIs fed to the branches: every foreground one (Detectron)
      by default; fewer takes a uniform random subset of them, to save compute.
    box_pooler: (output size, samples per bin) of the box head's RoIAlign.
    pooler_kwargs: the RoIAlign convention (aligned, level_epsilon, box_plus_one,
      max_adaptive_samples).
    fg_iou, box_weights: the foreground IoU and box coding of the box head.
    box_plus_one: 1.0 for Detectron's "+1" boxes, else 0.0.
    roi_chunk_mb: inference pools RoIs in chunks whose bilinear samples fit in this budget
      (None: all at once); bounds the peak memory of serving and evaluation.
  """

  def __init__(self,
               box_head,
               box_predictor,
               branches: Sequence[RoIBranch] = (),
               *,
               roi_levels: Sequence[int],
               samples_per_image: int,
               positive_fraction: float,
               branch_rois_per_image: Optional[int],
               box_pooler: Tuple[int, int],
               pooler_kwargs: dict,
               fg_iou: float,
               box_weights: Sequence[float],
               box_plus_one: float,
               roi_chunk_mb: Optional[float],
               **kwargs):
    super().__init__(**kwargs)
    self._autocast = False  # boxes stay float32 (see MaskRCNN)
    self.box_head, self.box_predictor = box_head, box_predictor
    # Attributes in this order keep the variables' order (and so the optimizer's slots) of
    # checkpoints written before the heads were one layer.
    self.branch_kinds = []
    for branch in branches:
      setattr(self, f"{branch.kind}_head", branch)
      self.branch_kinds.append(branch.kind)
    self.roi_levels = list(roi_levels)
    self.samples_per_image = samples_per_image
    self.positive_fraction = positive_fraction
    self.branch_rois_per_image = min(branch_rois_per_image or samples_per_image,
                                     int(samples_per_image * positive_fraction))
    self.poolers = {"box": tuple(box_pooler)}
    self.poolers.update({b.kind: tuple(b.pooler) for b in branches})
    self.pooler_kwargs = dict(pooler_kwargs)
    self.fg_iou = float(fg_iou)
    self.box_weights = tuple(float(w) for w in box_weights)
    self.box_plus_one = box_plus_one
    self.roi_chunk_bytes = int(roi_chunk_mb * 2**20) if roi_chunk_mb else None

  num_stages = 1  # box stages

  @property
  def branches(self) -> List[RoIBranch]:
    return [getattr(self, f"{k}_head") for k in self.branch_kinds]

  def branch(self, kind: str) -> Optional[RoIBranch]:
    """The branch of this kind ("mask", ...), or None."""
    return getattr(self, f"{kind}_head") if kind in self.branch_kinds else None

  def pool_rois(self, feats, boxes, pooler: str, training=True):
    """RoIAlign of boxes [B, N, 4] with `pooler`'s settings ("box" or a branch's kind) ->
    [B, N, S, S, C]."""
    size, sampling_ratio = self.poolers[pooler]
    return multilevel_roi_align({l: feats[l] for l in self.roi_levels},
                                boxes,
                                size,
                                sampling_ratio,
                                max_chunk_bytes=None if training else self.roi_chunk_bytes,
                                **self.pooler_kwargs)

  # Training.

  def train_outputs(self, feats, proposals, proposal_valid, image_size,
                    batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Samples RoIs among proposals [B, P, 4] (valid [B, P]) and returns every head's raw
    outputs with their targets (the keys `losses` reads) and num_fg_rois [B]."""
    gt_classes = batch["gt_classes"]
    crowd = batch["crowd_boxes"]
    s = sampling.sample_rois(proposals,
                             proposal_valid,
                             batch["gt_boxes"],
                             gt_classes,
                             gt_classes > 0,
                             crowd,
                             tf.reduce_any(crowd > 0, axis=-1),
                             self.samples_per_image,
                             self.positive_fraction,
                             fg_iou=self.fg_iou,
                             seeds=batch.get("sample_seed"),
                             box_weights=self.box_weights)
    outputs = self.box_train_outputs(feats, s, image_size, batch)
    outputs["num_fg_rois"] = tf.reduce_sum(tf.cast(s["is_fg"], tf.float32), axis=1)
    r = self.branch_rois_per_image
    fg = {k: s[k][:, :r] for k in ("classes", "gt_index", "is_fg")}
    for branch in self.branches:
      outputs.update(branch.train_outputs(self.pool_rois, feats, s["rois"][:, :r], fg, batch))
    return outputs

  def box_input(self, pooled):
    """Pooled RoI features [B, N, S, S, C] as the box head sees them (identity here)."""
    return pooled

  def box_train_outputs(self, feats, s, image_size, batch) -> Dict[str, tf.Tensor]:
    """The box head on the sampled RoIs `s` (`sampling.sample_rois`)."""
    pooled = self.box_input(self.pool_rois(feats, s["rois"], "box"))
    class_logits, box_deltas = self.box_predictor(self.box_head(pooled, training=True))
    return dict(class_logits=class_logits,
                box_deltas=box_deltas,
                roi_classes=s["classes"],
                roi_box_targets=s["box_targets"],
                roi_weights=s["weights"])

  def loss_names(self) -> List[str]:
    return self.box_loss_names() + [n for b in self.branches for n in b.loss_names()]

  def box_loss_names(self) -> List[str]:
    return ["fast_rcnn_cls_loss", "fast_rcnn_box_loss"]

  def losses(self, outputs, global_sum: Reducer = None) -> Dict[str, tf.Tensor]:
    """Every RoI loss by name, in `loss_names` order."""
    losses = self.box_losses(outputs, global_sum)
    for branch in self.branches:
      losses.update(branch.losses(outputs, global_sum))
    return losses

  def box_losses(self, outputs, global_sum: Reducer) -> Dict[str, tf.Tensor]:
    cls, box = fast_rcnn_losses(outputs["class_logits"], outputs["box_deltas"],
                                outputs["roi_classes"], outputs["roi_box_targets"],
                                outputs["roi_weights"], global_sum)
    return dict(fast_rcnn_cls_loss=cls, fast_rcnn_box_loss=box)

  # Inference.

  def plus_one(self):
    """[4] offset from inclusive "+1" boxes to continuous ones (zeros by default)."""
    return tf.constant([0.0, 0.0, self.box_plus_one, self.box_plus_one])

  def box_predictions(self, feats, proposals, valid, image_size):
    """Every proposal's per-class boxes [B, N, K-1, 4] (resized-image pixels, continuous
    coordinates) and scores [B, N, K-1], before NMS. A "+1" (inclusive) box is returned as
    the [x1, x2 + 1) it spans, which also gives NMS Detectron's "+1" overlaps."""
    pooled = self.pool_rois(feats, proposals, "box", training=False)
    logits, deltas = self.box_predictor(self.box_head(pooled, training=False))
    boxes, probs = postprocess.class_boxes(proposals, valid, logits, deltas, image_size,
                                           self.box_weights, self.box_plus_one)
    return boxes + self.plus_one(), probs

  def instance_outputs(self, feats, det: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Adds every branch's outputs for the detected boxes to `det`."""
    for branch in self.branches:
      det.update(branch.predict(self.pool_rois, feats, det, self.plus_one()))
    return det

  def branch_outputs(self, kind: str, feats, boxes, classes=None) -> Dict[str, tf.Tensor]:
    """The outputs of branch `kind` alone for boxes [B, D, 4] of classes [B, D] (test-time
    augmentation merges boxes first)."""
    branch = self.branch(kind)
    if branch is None:
      raise ValueError(f"the RoI heads have no {kind!r} branch (they have {self.branch_kinds})")
    det = {"boxes": boxes, "classes": classes}
    return branch.predict(self.pool_rois, feats, det, self.plus_one())

  # Step-driven behaviour (none here; see the subclasses).

  def set_step(self, step: int) -> Optional[str]:
    """Applies what changes at training step `step`; returns a line saying what changed, or
    None."""
    return None

  def steps_to_next_change(self, step: int) -> Optional[int]:
    """Steps from `step` to the next step `set_step` changes something, or None."""
    return None

  def decay_groups(self) -> List[Tuple[List[tf.Variable], Callable[[], tf.Tensor]]]:
    """(variables, gate) pairs whose weight decay is multiplied by `gate()` (a float scalar,
    read in the training step); variables in none of them are decayed ungated."""
    return []
