r"""Trains Mask R-CNN FPN as bound by gin files.

  python -m rethink_tf.train --gin_file=gin_configs/demo/shapes_scratch.gin --model_dir=/tmp/run
  python -m rethink_tf.train --gin_file=gin_configs/paper/r50_fpn_gn_scratch_3x.gin \
      --model_dir=gs://bucket/run --strategy=tpu --tpu=my-tpu

Resumes from the latest checkpoint in --model_dir (refused, unless --allow_config_change, when
that run's operative config differs). A configuration mistake, a diverged loss or a failed
checkpoint write ends the run with exit code 1 and one message that says what to do. Evaluates every
`TrainConfig.eval_every_steps` and at the end of the schedule, appending to
`model_dir/eval_metrics.jsonl`.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from rethink_tf import (
    config,  # noqa: E402
    console,  # noqa: E402
)
from rethink_tf.checkpoint.init import InitError  # noqa: E402
from rethink_tf.evaluation.evaluator import final_summary  # noqa: E402
from rethink_tf.flags import define_common_flags  # noqa: E402
from rethink_tf.training import distribute  # noqa: E402
from rethink_tf.training.input_damage import DamagedInputError  # noqa: E402
from rethink_tf.training.task import detection_trainer  # noqa: E402
from rethink_tf.training.trainer import CheckpointWriteError  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  if not FLAGS.model_dir:
    sys.exit("--model_dir is required")
  if FLAGS.cpu_devices:
    distribute.split_cpu(FLAGS.cpu_devices)
  t0 = time.time()
  try:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    strategy = distribute.get_strategy(FLAGS.strategy, FLAGS.tpu)
    metrics = detection_trainer(FLAGS.model_dir,
                                strategy,
                                allow_config_change=FLAGS.allow_config_change).train()
  except (config.ConfigError, InitError, FloatingPointError, CheckpointWriteError,
          DamagedInputError) as e:
    # Configuration mistakes and the expected failures of a long run: the message names the
    # binding, file or checkpoint and says what to do; a traceback would bury it.
    sys.exit(f"error: {e}")
  if metrics:
    print(f"final: {final_summary(metrics)} after {(time.time() - t0) / 60:.1f} min", flush=True)
    print(json.dumps(metrics))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-train`)."""
  define_common_flags()
  app.run(main)


if __name__ == "__main__":
  console_main()
