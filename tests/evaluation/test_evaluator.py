"""Evaluation reuses one traced detector per model (no retrace per evaluation)."""

import gc
import weakref

import pytest
import tensorflow as tf
import tf_keras

from rethink_tf.evaluation import evaluator


class _Doubler(tf_keras.Model):

  def detect(self, images, image_size):
    return {"x": images * 2.0 + tf.reduce_sum(image_size)}


def test_detect_function_is_traced_once_per_model_and_freed_with_it():
  model = _Doubler()
  fn = evaluator.detect_function(model)
  images, sizes = tf.ones([2, 4, 4, 3]), tf.ones([2, 2])
  for _ in range(3):  # three "evaluations"
    assert evaluator.detect_function(model) is fn
    assert float(evaluator.detect_function(model)(images, sizes)["x"][0, 0, 0, 0]) == 6.0
  assert fn.experimental_get_tracing_count() == 1
  assert "_detect_function" not in model._trackable_children()  # not in checkpoints
  other = _Doubler()
  assert evaluator.detect_function(other) is not fn
  ref = weakref.ref(model)
  del model, fn
  gc.collect()
  assert ref() is None


class _GroundTruthKeypointDetector:
  """Returns the one ground-truth person of `a.png` (box and keypoints, in the evaluation
  pipeline's resized pixels: scale 0.5) as its detection."""

  anchor_kwargs = dict(min_level=2, max_level=6, aspect_ratios=(1.0,), anchor_size=4.0)

  class roi_heads:  # a keypoint branch, no mask branch  # noqa: N801
    branch = staticmethod(lambda kind: "present" if kind == "keypoint" else None)

  def __init__(self, box_xywh, keypoints):
    x, y, w, h = box_xywh
    self.box = tf.constant([[[y, x, y + h, x + w]]], tf.float32) * 0.5
    points = tf.reshape(tf.constant(keypoints, tf.float32), [1, 1, -1, 3])
    self.points = tf.concat([points[..., :2] * 0.5, tf.ones_like(points[..., 2:])], -1)

  def detect(self, images, image_size):
    return {
        "boxes": self.box, "scores": tf.ones([1, 1]), "classes": tf.ones([1, 1], tf.int32),
        "num_detections": tf.ones([1], tf.int32), "keypoints": self.points
    }


def test_ground_truth_keypoints_score_keypoint_ap_1_through_the_evaluation(tmp_path):
  import json

  import numpy as np
  from PIL import Image

  from rethink_tf.data import coco_tfrecord
  from rethink_tf.data.input_pipeline import InputConfig
  names = ("nose", "left_eye", "right_eye", "left_ear")
  Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "a.png")
  person = {
      "id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 2000.0,
      "bbox": [20.0, 10.0, 60.0, 70.0], "num_keypoints": 3,
      "segmentation": [[20.0, 10.0, 80.0, 10.0, 80.0, 80.0, 20.0,
                        80.0]], "keypoints": [50.0, 30.0, 2, 40.0, 20.0, 2, 60.0, 22.0, 1, 0, 0, 0]
  }
  (tmp_path / "a.json").write_text(
      json.dumps({
          "images": [{"id": 1, "file_name": "a.png", "height": 96, "width": 128}],
          "categories": [{"id": 1, "name": "person",
                          "keypoints": list(names)}], "annotations": [person]
      }))
  coco_tfrecord.convert(str(tmp_path / "a.json"), str(tmp_path), str(tmp_path / "val"), strict=True)
  cfg = InputConfig(val_pattern=str(tmp_path / "val-*.tfrecord"),
                    val_annotations=str(tmp_path / "a.json"),
                    category_ids=(1,),
                    short_side=48,
                    max_long_side=64,
                    padded_size=(64, 64),
                    keypoint_names=names,
                    keypoint_oks_sigmas=(0.05,) * 4)
  model = _GroundTruthKeypointDetector(person["bbox"], person["keypoints"])
  metrics = evaluator.run_evaluation(model, cfg, batch_size=1)
  assert set(metrics) == {"bbox", "keypoints"}
  assert metrics["keypoints"]["AP"] == pytest.approx(1.0)
  assert metrics["bbox"]["AP"] == pytest.approx(1.0)
  # Keypoints 4 px off (2 resized pixels) are not a perfect match: the check can fail.
  off = _GroundTruthKeypointDetector(person["bbox"], person["keypoints"])
  off.points += tf.constant([2.0, 0.0, 0.0])
  assert evaluator.run_evaluation(off, cfg, batch_size=1)["keypoints"]["AP"] < 0.9
