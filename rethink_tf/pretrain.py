r"""Pre-trains the detector's backbone as a classifier: the miniature study's "ImageNet" stage.

  python -m rethink_tf.pretrain --gin_file=gin_configs/demo/pretrain.gin --model_dir=/tmp/pre

Trains the detector's backbone (as bound by the same gin files) as a classifier on the
synthetic classification set; see `rethink_tf/training/pretraining.py` for the recipe.

Writes, in --model_dir:
  `backbone.index/.data-*`  the backbone checkpoint init mode `pretrained` restores
                            (bind init_config.checkpoint = 'MODEL_DIR/backbone');
  `backbone.json`           its metadata: images_seen (what the images-incl-pretraining axis
                            adds, as the paper's Fig. 2), steps, batch, validation top-1 and the
                            pixel convention the trainer applies to the detector's inputs;
  `train/`, `eval/`         TensorBoard scalars (loss, top-1, learning rate);
  `ckpt-*`                  full training state, so a killed job resumes where it stopped (a
                            SIGTERM saves one at the current step and stops cleanly).
`backbone.json` is written last, under a temporary name renamed when complete: its presence
means the checkpoint is complete.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from rethink_tf import (
    config,  # noqa: E402
    console,  # noqa: E402
)
from rethink_tf.training.pretraining import pretrain  # noqa: E402
from rethink_tf.training.trainer import CheckpointWriteError  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  if not FLAGS.model_dir:
    sys.exit("--model_dir is required")
  try:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    pretrain(FLAGS.model_dir)  # None after a SIGTERM: the same command resumes
  except (config.ConfigError, FloatingPointError, CheckpointWriteError) as e:
    sys.exit(f"error: {e}")


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-pretrain`)."""
  flags.DEFINE_multi_string("gin_file", [], "Gin files (repeatable); later ones override.")
  flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. PretrainConfig.steps=100.")
  flags.DEFINE_string("model_dir", None, "Where the backbone checkpoint and summaries go.")
  app.run(main)


if __name__ == "__main__":
  console_main()
