r"""Per-module and total parameter counts of the gin-configured model, as JSON.

  python -m rethink_tf.tools.model_summary --gin_file=gin_configs/paper/r50_fpn_gn_scratch_3x.gin

prints {"modules": {"backbone": N, "fpn": N, "rpn": N, "box_head": N, "box_predictor": N,
"mask_head": N, "mask_predictor": N}, "total": N, "trainable": N} ("fpn" and the mask modules
only when the model has them; Cascade R-CNN adds "box_head_stage<k>" and
"box_predictor_stage<k>", Keypoint R-CNN "keypoint_head" and "keypoint_predictor"). The model
is built at a small input size: parameter counts do not depend on it.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import (
    config,  # noqa: E402
    console,  # noqa: E402
)
from rethink_tf.data.input_pipeline import InputConfig  # noqa: E402
from rethink_tf.modeling.build import build_model  # noqa: E402

FLAGS = flags.FLAGS


def _count(variables) -> int:
  """Parameters among `variables`: BN moving statistics are buffers (torch counts neither), and
  so is the cascade's on/off flag."""
  return int(
      sum(np.prod(v.shape) for v in variables if "moving_" not in v.name and v.dtype.is_floating))


def _head_and_predictor(name: str, head, predictor) -> dict:
  """{name_head: the head's convs, name_predictor: its final layer} (Detectron's split)."""
  pred_ids = {id(v) for v in predictor.variables}
  return {
      f"{name}_head": _count([v for v in head.variables if id(v) not in pred_ids]),
      f"{name}_predictor": _count(predictor.variables)
  }


def summarize(model) -> dict:
  """Counts of a built MaskRCNN, split as Detectron's modules (absent modules omitted)."""
  modules = {"backbone": _count(model.backbone.variables)}
  if model.fpn is not None:
    modules["fpn"] = _count(model.fpn.variables)
  heads = model.roi_heads
  modules.update(rpn=_count(model.rpn_head.variables),
                 box_head=_count(heads.box_head.variables),
                 box_predictor=_count(heads.box_predictor.variables))
  mask = heads.branch("mask")
  if mask is not None:
    modules.update(_head_and_predictor("mask", mask, mask.predictor))
  later = zip(getattr(heads, "cascade_box_heads", []), getattr(heads, "cascade_box_predictors", []))
  for k, (head, predictor) in enumerate(later):
    modules[f"box_head_stage{k + 2}"] = _count(head.variables)
    modules[f"box_predictor_stage{k + 2}"] = _count(predictor.variables)
  keypoint = heads.branch("keypoint")
  if keypoint is not None:
    modules.update(_head_and_predictor("keypoint", keypoint, keypoint.score_lowres))
  return {
      "modules": modules, "total": _count(model.variables),
      "trainable": _count(model.trainable_variables)
  }


def build_and_summarize(size: int = 128) -> dict:
  cfg = InputConfig()
  # The one forward pass only creates the variables: a few RoIs instead of the preset's 1000
  # (whose box, mask and cascade heads cost ~100 GFLOPs each at X152 width).
  model = build_model(num_classes=cfg.num_classes,
                      image_size=(size, size),
                      rpn_post_nms_topk_test=8,
                      detections_per_image=8)
  model.detect(tf.zeros([1, size, size, 3]), tf.constant([[size, size]], tf.float32))
  return summarize(model)


def main(argv):
  console.show_library_logs()
  del argv
  # Not finalized: a summary builds the architecture and needs no %gin.REQUIRED value (the
  # pretrained checkpoint of init/pretrained.gin).
  config.parse_gin(FLAGS.gin_file, FLAGS.gin_param, finalize=False)
  print(json.dumps(build_and_summarize(), indent=1))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-model-summary`)."""
  flags.DEFINE_multi_string("gin_file", [], "Gin files.")
  flags.DEFINE_multi_string("gin_param", [], "Gin bindings.")
  app.run(main)


if __name__ == "__main__":
  console_main()
