r"""Evaluates a checkpoint on the validation split (box and mask AP, pycocotools).

  python -m rethink_tf.evaluate --gin_file=F --model_dir=D [--checkpoint=C]

Without --checkpoint the latest checkpoint of --model_dir is used. Prints the 12 COCO stats of
box and mask AP as JSON.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import config  # noqa: E402
from rethink_tf.data.input_pipeline import InputConfig  # noqa: E402
from rethink_tf.evaluation.evaluator import run_evaluation  # noqa: E402
from rethink_tf.flags import define_common_flags  # noqa: E402
from rethink_tf.modeling.build import build_model  # noqa: E402
from rethink_tf.training.trainer import apply_input_convention  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  del argv
  config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  path = FLAGS.checkpoint or (tf.train.latest_checkpoint(FLAGS.model_dir)
                              if FLAGS.model_dir else None)
  if not path:
    sys.exit(f"no checkpoint: pass --checkpoint or a --model_dir that holds one "
             f"(got {FLAGS.model_dir!r})")
  cfg = apply_input_convention(InputConfig().prepare())
  model = build_model(num_classes=cfg.num_classes, image_size=cfg.padded_size)
  model.detect(tf.zeros([1, *cfg.padded_size, 3]), tf.constant([cfg.padded_size], tf.float32))
  tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
  metrics = run_evaluation(model, cfg)
  print(json.dumps({"checkpoint": path, **metrics}))


if __name__ == "__main__":
  define_common_flags()
  flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: latest in --model_dir).")
  app.run(main)
