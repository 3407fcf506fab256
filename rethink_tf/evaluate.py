r"""Evaluates a checkpoint on the validation split (box and mask AP, pycocotools).

  python -m rethink_tf.evaluate --gin_file=F --model_dir=D [--checkpoint=C] [--tta] \
      [--results_file=detections.json]

--checkpoint is a prefix or a directory (its latest checkpoint); without it the latest
checkpoint of --model_dir is used. Prints the 12 COCO stats of box and mask AP as JSON.
--tta evaluates with test-time augmentation as bound in gin (`TestTimeAugmentation.scales`,
`.flip`, `.max_long_side`; Detectron's TEST.BBOX_AUG / MASK_AUG). --results_file writes the
detections in COCO's results format (boxes xywh in original pixels, RLE masks).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import (
    config,  # noqa: E402
    console,  # noqa: E402
)
from rethink_tf.data import damaged_records  # noqa: E402
from rethink_tf.evaluation.evaluator import run_evaluation  # noqa: E402
from rethink_tf.evaluation.tta import TestTimeAugmentation  # noqa: E402
from rethink_tf.flags import define_common_flags  # noqa: E402
from rethink_tf.inference import build_for_inference, resolve_checkpoint  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  try:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    path = resolve_checkpoint(FLAGS.checkpoint, FLAGS.model_dir)
    model, cfg = build_for_inference(path)
    cfg.prepare(training=False)
  except (FileNotFoundError, config.ConfigError) as e:
    sys.exit(f"error: {e}")
  tta = TestTimeAugmentation() if FLAGS.tta else None
  try:
    metrics = run_evaluation(model, cfg, tta=tta, results_path=FLAGS.results_file)
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    if not damaged_records.is_damaged_input(e):
      raise
    # A damaged validation record: name it, no traceback.
    found = damaged_records.locate(sorted(tf.io.gfile.glob(cfg.val_pattern)), e)
    where = "; ".join(damaged_records.describe(p) for p in found) or (
        f"a shard matching {cfg.val_pattern!r} ({damaged_records.error_text(e)})")
    sys.exit(f"error: unreadable validation data: {where}; replace the shard "
             f"(rethink-tf-verify-tfrecords --pattern='{cfg.val_pattern}' lists every damaged "
             "record)")
  print(json.dumps({"checkpoint": path, **({"tta": vars(tta)} if tta else {}), **metrics}))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-evaluate`)."""
  define_common_flags()
  flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or directory (default: latest in "
                      "--model_dir).")
  flags.DEFINE_bool(
      "tta", False, "Evaluate with test-time augmentation (flip + the scales "
      "bound to TestTimeAugmentation.scales).")
  flags.DEFINE_string("results_file", None, "Also write the detections here (COCO results "
                      "JSON).")
  app.run(main)


if __name__ == "__main__":
  console_main()
