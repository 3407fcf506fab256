"""The evaluator reproduces pycocotools' published fake-results scores (cocoapi results/)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rethink_tf.evaluation import coco_evaluator

FIXTURE = "coco/cocoapi_val2014_100"


def _published(testdata, iou_type):
  """The 12 stats cocoapi printed for iou_type in val2014_fake_eval_res.txt."""
  text = open(os.path.join(testdata, FIXTURE, "val2014_fake_eval_res.txt")).read()
  block = text.split(f"type={iou_type}")[1].split("type=")[0]
  return [float(v) for v in re.findall(r"\] = ([0-9.]+)", block)]


@pytest.mark.parametrize("iou_type,kind,expected", [
    ("bbox", "fakebbox", (0.505, 0.697, 0.573)),
    ("segm", "fakesegm", (0.320, 0.562, 0.299)),
])
def test_reproduces_published_scores(testdata, iou_type, kind, expected):
  gt = coco_evaluator.load_coco(os.path.join(testdata, FIXTURE, "instances_val2014_100.json"))
  dets = os.path.join(testdata, FIXTURE, f"instances_val2014_{kind}100_results.json")
  stats = coco_evaluator.evaluate(gt, dets, iou_type)
  assert list(stats) == list(coco_evaluator.STAT_NAMES)
  got = [round(stats[k], 3) for k in ("AP", "AP50", "AP75")]
  assert got == list(expected)
  published = _published(testdata, iou_type)
  assert len(published) == 12
  np.testing.assert_allclose([stats[k] for k in coco_evaluator.STAT_NAMES], published, atol=5e-4)


def test_cli_prints_stats_json(testdata):
  out = subprocess.run([
      sys.executable, "-m", "rethink_tf.evaluation.coco_evaluator",
      f"--annotations={os.path.join(testdata, FIXTURE, 'instances_val2014_100.json')}",
      "--detections=" +
      os.path.join(testdata, FIXTURE, "instances_val2014_fakebbox100_results.json"),
      "--iou_type=bbox"
  ],
                       capture_output=True,
                       text=True,
                       check=True)
  stats = json.loads(out.stdout.strip().splitlines()[-1])
  assert round(stats["AP"], 3) == 0.505 and len(stats) == 12


def test_ground_truth_against_itself_is_perfect(testdata):
  path = os.path.join(testdata, "coco/icevision_coco6/annotations.json")
  gt = coco_evaluator.load_coco(path)
  dets = [
      dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0)
      for a in json.load(open(path))["annotations"]
      if not a.get("iscrowd")
  ]
  assert coco_evaluator.evaluate(gt, dets, "bbox")["AP"] == pytest.approx(1.0)


def test_no_detections_scores_zero(testdata):
  gt = coco_evaluator.load_coco(os.path.join(testdata, FIXTURE, "instances_val2014_100.json"))
  assert all(v == 0.0 for v in coco_evaluator.evaluate(gt, [], "segm").values())
