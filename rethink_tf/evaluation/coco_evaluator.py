r"""COCO box and mask AP with pycocotools, on the host.

  python -m rethink_tf.evaluation.coco_evaluator --annotations=GT.json \
      --detections=RES.json --iou_type=bbox|segm|keypoints

prints the COCO stats as JSON (12 for boxes and masks, 10 for keypoints). The numbers are
pycocotools' own (`COCOeval.summarize`).
"""

import contextlib
import io
import json
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from absl import app, flags, logging
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rethink_tf import console
from rethink_tf.layers.box_ops import yxyx_to_coco_xywh

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl")
# COCOeval.summarize's order for iouType "keypoints" (OKS; no small objects).
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm", "keypoints")


def load_coco(annotations: Union[str, dict]) -> COCO:
  """A pycocotools COCO from a path or a dict, without its progress prints."""
  with contextlib.redirect_stdout(io.StringIO()):
    if isinstance(annotations, str):
      return COCO(annotations)
    coco = COCO()
    coco.dataset = annotations
    coco.createIndex()
    return coco


def evaluate(gt: COCO,
             detections: Union[str, List[dict]],
             iou_type: str,
             verbose: bool = False,
             kpt_oks_sigmas: Optional[Sequence[float]] = None) -> Dict[str, float]:
  """Runs COCOeval; returns {stat name: value} for the standard stats (`STAT_NAMES`, or
  `KEYPOINT_STAT_NAMES` for iou_type "keypoints").

  With no detections every stat is 0 (pycocotools refuses an empty result list).
  kpt_oks_sigmas: per-keypoint OKS constants for keypoint sets other than COCO's 17 persons'
  (pycocotools' default).
  """
  if iou_type not in IOU_TYPES:
    raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
  names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
  if isinstance(detections, str):
    with open(detections) as f:
      detections = json.load(f)
  if not detections:
    return {k: 0.0 for k in names}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    dt = gt.loadRes(detections)
    ev = COCOeval(gt, dt, iou_type)
    if kpt_oks_sigmas is not None:
      ev.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, np.float64)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  if verbose:
    logging.info(out.getvalue())
  return {k: float(v) for k, v in zip(names, ev.stats)}


def detections_to_coco(image_id: int,
                       boxes_yxyx: np.ndarray,
                       scores: np.ndarray,
                       category_ids: np.ndarray,
                       masks: np.ndarray = None,
                       keypoints: np.ndarray = None,
                       mask_rles: Optional[Sequence[bytes]] = None,
                       image_hw: Optional[Sequence[int]] = None) -> List[dict]:
  """COCO result dicts for one image.

  Args:
    boxes_yxyx: [D, 4] in original-image pixels; scores [D]; category_ids [D] COCO ids.
    masks: optional [D, H, W] uint8 binary masks at original resolution, or
    mask_rles: [D] COCO compressed RLE `counts` (bytes or str) of masks over the image_hw
      (H, W) image (what the evaluator and the SavedModel compute in the graph).
    keypoints: optional [D, K, 3] (x, y, score) in original-image pixels; written as COCO's
      flat [x, y, v] list with v = 1 (pycocotools ignores a result's v).
  """
  xywh = yxyx_to_coco_xywh(boxes_yxyx)
  results = []
  for i in range(len(scores)):
    r = {
        "image_id": int(image_id), "category_id": int(category_ids[i]),
        "bbox": [round(float(v), 3) for v in xywh[i]], "score": float(scores[i])
    }
    if masks is not None:
      rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
      rle["counts"] = rle["counts"].decode("ascii")
      r["segmentation"] = rle
    elif mask_rles is not None:
      counts = mask_rles[i]
      r["segmentation"] = {
          "size": [int(image_hw[0]), int(image_hw[1])],
          "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts
      }
    if keypoints is not None:
      xy1 = np.concatenate([keypoints[i][:, :2], np.ones_like(keypoints[i][:, :1])], -1)
      r["keypoints"] = [round(float(v), 2) for v in xy1.reshape(-1)]
    results.append(r)
  return results


FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  stats = evaluate(load_coco(FLAGS.annotations), FLAGS.detections, FLAGS.iou_type)
  print(json.dumps(stats))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-coco-eval`)."""
  flags.DEFINE_string("annotations", None, "Ground-truth COCO JSON.")
  flags.DEFINE_string("detections", None, "COCO results JSON.")
  flags.DEFINE_enum("iou_type", "bbox", list(IOU_TYPES), "Evaluate boxes, masks or "
                    "keypoints.")
  flags.mark_flags_as_required(["annotations", "detections"])
  app.run(main)


if __name__ == "__main__":
  console_main()
