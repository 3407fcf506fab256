r"""Evaluates a checkpoint on the validation split (box and mask AP, pycocotools).

  python -m rethink_tf.evaluate --gin_file=F --model_dir=D [--checkpoint=C]

--checkpoint is a prefix or a directory (its latest checkpoint); without it the latest
checkpoint of --model_dir is used. Prints the 12 COCO stats of box and mask AP as JSON.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from rethink_tf import config  # noqa: E402
from rethink_tf.evaluation.evaluator import run_evaluation  # noqa: E402
from rethink_tf.flags import define_common_flags  # noqa: E402
from rethink_tf.inference import build_for_inference, resolve_checkpoint  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    path = resolve_checkpoint(FLAGS.checkpoint, FLAGS.model_dir)
    model, cfg = build_for_inference(path)
    cfg.prepare(training=False)
  except (FileNotFoundError, config.ConfigError) as e:
    sys.exit(f"error: {e}")
  metrics = run_evaluation(model, cfg)
  print(json.dumps({"checkpoint": path, **metrics}))


if __name__ == "__main__":
  define_common_flags()
  flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or directory (default: latest in "
                      "--model_dir).")
  app.run(main)
