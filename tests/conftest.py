"""Test session setup: quiet TF, two logical CPU devices, a private data cache."""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Generated datasets go to a per-session cache, never to the user's.
os.environ["RETHINK_TF_CACHE"] = tempfile.mkdtemp(prefix="rethink_tf_test_cache_")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO_ROOT, "tests", "testdata")
sys.path.insert(0, REPO_ROOT)

# Multi-replica tests need 2 logical CPU devices; this must happen before TF picks devices.
from rethink_tf.training.distribute import split_cpu  # noqa: E402

try:
  split_cpu(2)
except RuntimeError:  # devices already initialized by another plugin
  pass


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Every test starts and ends with no gin bindings (a test that parses a config must not
  leak its bindings into the next one)."""
  import gin
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(autouse=True)
def _library_logs_to_stdout():
  """The library's absl log lines, as plain lines on the test's stdout (as the programs show
  them: `rethink_tf/console.py`), so capsys reads them."""
  import logging

  from absl import logging as absl_logging

  class ToStdout(logging.Handler):

    def emit(self, record):
      sys.stdout.write(self.format(record) + "\n")

  handler = ToStdout()
  handler.setFormatter(logging.Formatter("%(message)s"))
  logger = absl_logging.get_absl_logger()
  level, propagate = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  yield
  logger.removeHandler(handler)
  logger.setLevel(level)
  logger.propagate = propagate


@pytest.fixture(scope="session")
def testdata():
  return TESTDATA


@pytest.fixture(scope="session")
def roi_ref():
  import numpy as np
  return np.load(os.path.join(TESTDATA, "roi_align_ref.npz"))


# The tiny config with every head: Cascade R-CNN's 3 box stages and a 4-keypoint head on the
# synthetic keypoint task.
TINY_CASCADE_KEYPOINTS = [
    "build_model.cascade_ious = (0.5, 0.6, 0.7)", "SyntheticDataset.keypoints = True",
    "InputConfig.keypoint_names = ('top', 'bottom', 'left_point', 'right_point')",
    "InputConfig.keypoint_oks_sigmas = (0.05, 0.05, 0.05, 0.05)", "build_model.num_keypoints = 4",
    "build_model.keypoint_head_conv_dim = 32", "build_model.keypoint_head_num_conv = 2"
]

# The tiny config's reference run: 20 steps from scratch, evaluated at steps 10 and 20.
TINY_TRAIN = [sys.executable, "-m", "rethink_tf.train", "--gin_file=gin_configs/testing/tiny.gin"]
TINY_REFERENCE_ARGS = ["--gin_param=TrainConfig.eval_every_steps=10"]


def run_tiny_evaluate(model_dir, val_pattern):
  """`rethink_tf.evaluate` of the tiny config's run in `model_dir` on `val_pattern`'s shards:
  the completed process."""
  import subprocess
  return subprocess.run([
      sys.executable, "-m", "rethink_tf.evaluate", "--gin_file=gin_configs/testing/tiny.gin",
      f"--model_dir={model_dir}", f"--gin_param=InputConfig.val_pattern='{val_pattern}'"
  ],
                        cwd=REPO_ROOT,
                        capture_output=True,
                        text=True,
                        timeout=600)


@pytest.fixture(scope="session")
def tiny_reference_run(tmp_path_factory):
  """One uninterrupted tiny training run, shared by the tests that need a trained model:
  (model_dir, completed process of `rethink_tf.train`)."""
  import subprocess
  model_dir = tmp_path_factory.mktemp("reference") / "run"
  r = subprocess.run(TINY_TRAIN + [f"--model_dir={model_dir}", *TINY_REFERENCE_ARGS],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  return model_dir, r


@pytest.fixture(scope="session")
def mirrored_strategy():
  """One MirroredStrategy over the 2 logical CPUs for the whole session: strategies created
  side by side in one process can collide on collective instance keys."""
  from rethink_tf.training import distribute
  return distribute.get_strategy("mirrored")


def copy_weights(src, dst):
  """Gives trainer `dst` the variables of trainer `src` (the same starting point for runs
  under different strategies, whose initializers draw different random streams)."""
  assert [v.name for v in src.model.variables] == [v.name for v in dst.model.variables]
  for a, b in zip(src.model.variables, dst.model.variables):
    b.assign(a.numpy())


def run_steps(trainer, n):
  """Runs n steps through the trainer's per-replica step (eagerly under `strategy.run`);
  returns each step's global-batch losses as floats."""
  import tensorflow as tf
  step = trainer.task.replica_step()
  it = iter(trainer.task.dataset())
  out = []
  for _ in range(n):
    per_replica, _ = trainer.strategy.run(step, args=(next(it),))
    out.append({
        k: float(trainer.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None))
        for k, v in per_replica.items()
    })
  return out


# The tiny pre-training stage: 30 classification steps of batch 16 on 32 px images.
TINY_PRETRAIN = [
    sys.executable, "-m", "rethink_tf.pretrain", "--gin_file=gin_configs/testing/tiny_pretrain.gin"
]


@pytest.fixture(scope="session")
def tiny_pretrained_run(tmp_path_factory):
  """The tiny pre-training, then the tiny config fine-tuned from it like the reference run
  (20 steps, evaluated at 10 and 20): (pretrain dir, model_dir, pretrain process, train
  process)."""
  import subprocess
  root = tmp_path_factory.mktemp("pretrained")
  pre_dir, model_dir = root / "pretrain", root / "run"
  p = subprocess.run(TINY_PRETRAIN + [f"--model_dir={pre_dir}"],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=900)
  t = None
  if p.returncode == 0:
    t = subprocess.run(TINY_TRAIN + [
        "--gin_file=gin_configs/init/pretrained.gin",
        f"--gin_param=init_config.checkpoint='{pre_dir}/backbone'", f"--model_dir={model_dir}",
        *TINY_REFERENCE_ARGS
    ],
                       cwd=REPO_ROOT,
                       capture_output=True,
                       text=True,
                       timeout=900)
  return pre_dir, model_dir, p, t


def declared_png(width, height):
  """A valid RGB PNG of width x height black pixels, written row by row: its IDAT compresses to
  about 1 KB per decoded MB (20000 x 20000: 1.2 GB decoded, about 1.2 MB on disk)."""
  import struct
  import zlib

  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body +
            struct.pack(">I",
                        zlib.crc32(kind + body) & 0xFFFFFFFF))

  z = zlib.compressobj(9)
  row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
  idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def served_coco_results(loaded, records):
  """COCO results from an exported model's tf_example signature on serialized records (one
  batch, like the evaluator's batch of 8)."""
  import tensorflow as tf

  from rethink_tf.evaluation import coco_evaluator
  out = {
      k: v.numpy()
      for k, v in loaded.signatures["tf_example"](examples=tf.constant(records)).items()
  }
  results = []
  for i, record in enumerate(records):
    ex = tf.train.Example.FromString(record)
    image_id = int(ex.features.feature["image/source_id"].bytes_list.value[0])
    n = int(out["num_detections"][i])
    h, w = out["image_size"][i]
    results += coco_evaluator.detections_to_coco(image_id,
                                                 out["detection_boxes"][i, :n],
                                                 out["detection_scores"][i, :n],
                                                 out["detection_classes"][i, :n],
                                                 mask_rles=out["detection_masks_rle"][i, :n],
                                                 image_hw=(h, w))
  return results
