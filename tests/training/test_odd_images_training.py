"""A training shard and a validation shard of odd images (`odd_records`): a default run stops at
the first record it cannot use with one line naming shard, record and reason; with
`skip_damaged_records` the run skips exactly those, counts them, trains on every other odd image
and evaluates the odd validation images; `rethink_tf.evaluate` names a damaged validation
record the same way."""

import glob
import re
import subprocess

import pytest
import tensorflow as tf
from odd_records import REFUSED, USABLE, odd_record, write_shard

from rethink_tf import config
from rethink_tf.data import verify_tfrecords
from rethink_tf.data.input_pipeline import InputConfig

from conftest import REPO_ROOT, TINY_TRAIN, run_tiny_evaluate

REASONS = {
    "corrupt_payload": r"image/encoded \(\d+ bytes\) does not decode \(corrupt or cut short\)",
    "size_mismatch": r"image/encoded decodes to 64 x 72 pixels but image/height, image/width say "
                     r"64 x 64",
}


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory):
  """Training: the 32 tiny records, 13 of them re-encoded as every odd kind (2 refused);
  validation: the 8 tiny validation records, each re-encoded as a usable kind."""
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  cfg = InputConfig().prepare()
  train = [
      r.numpy() for f in sorted(glob.glob(cfg.train_pattern)) for r in tf.data.TFRecordDataset(f)
  ]
  val = [r.numpy() for f in sorted(glob.glob(cfg.val_pattern)) for r in tf.data.TFRecordDataset(f)]
  config.gin.clear_config()
  root = tmp_path_factory.mktemp("odd")
  # The refused ones first: the default run meets them in its first steps.
  kinds = {1 + 2 * i: k for i, k in enumerate(list(REFUSED) + sorted(USABLE))}
  train = [odd_record(r, kinds[i]) if i in kinds else r for i, r in enumerate(train)]
  train_path = str(root / "train-00000-of-00001")
  offsets = write_shard(train_path, train)
  val_kinds = sorted(USABLE)[:len(val)]
  val_path = str(root / "val-00000-of-00001")
  write_shard(val_path, [odd_record(r, k) for r, k in zip(val, val_kinds)])
  refused = {k: (i, offsets[i]) for i, k in kinds.items() if k in REFUSED}
  return dict(train=train_path, val=val_path, refused=refused, val_records=val)


def _run(args, model_dir, shards, *params):
  return subprocess.run(args + [
      f"--model_dir={model_dir}", f"--gin_param=InputConfig.train_pattern='{shards['train']}'",
      f"--gin_param=InputConfig.val_pattern='{shards['val']}'",
      "--gin_param=InputConfig.shuffle_buffer=4", *[f"--gin_param={p}" for p in params]
  ],
                        cwd=REPO_ROOT,
                        capture_output=True,
                        text=True,
                        timeout=600)


def _named(shards, kind):
  i, offset = shards["refused"][kind]
  return re.escape(f"{shards['train']}: record {i} at byte {offset} (") + REASONS[kind] + r"\)"


def test_training_stops_at_an_unusable_image_then_skips_it(odd_shards, tmp_path):
  model_dir = tmp_path / "run"
  stopped = _run(TINY_TRAIN, model_dir, odd_shards)
  assert stopped.returncode == 1, stopped.stderr[-3000:]
  line = stopped.stderr.strip().splitlines()[-1]
  print(line)
  assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
  assert any(
      re.match("error: unreadable training data: " + _named(odd_shards, k) + "; checkpoint ", line)
      for k in REFUSED), line
  assert "--gin_param=InputConfig.skip_damaged_records=True" in line

  skipping = _run(TINY_TRAIN, model_dir, odd_shards, "InputConfig.skip_damaged_records=True")
  assert skipping.returncode == 0, skipping.stderr[-3000:]
  out = skipping.stdout
  print("\n".join(l for l in out.splitlines() if "skip" in l or "final" in l))
  for kind in REFUSED:
    assert re.search("skipping damaged record: " + _named(odd_shards, kind), out), out[-3000:]
  assert out.count("skip_damaged_records: skipped 2 damaged training record(s) in 1") == 2
  # Every usable odd image was trained on (20 steps of 2 over 30 records: the whole shard) and
  # the odd validation images evaluated.
  assert "final: box AP" in out and tf.train.latest_checkpoint(str(model_dir)).endswith("-20")

  _, problems = verify_tfrecords.verify_shard(odd_shards["train"])
  assert [(p.record, p.offset) for p in problems] == sorted(odd_shards["refused"].values())


def test_evaluation_stops_at_an_unusable_validation_image(odd_shards, tiny_reference_run, tmp_path):
  model_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-2000:]
  val = list(odd_shards["val_records"])
  val[5] = odd_record(val[5], "size_mismatch")
  path = str(tmp_path / "val-00000-of-00001")
  offsets = write_shard(path, val)
  e = run_tiny_evaluate(model_dir, path)
  assert e.returncode == 1 and "Traceback" not in e.stderr, e.stderr[-3000:]
  line = e.stderr.strip().splitlines()[-1]
  print(line)
  assert line.startswith(f"error: unreadable validation data: {path}: record 5 at byte "
                         f"{offsets[5]} (image/encoded decodes to 64 x 72 pixels but "
                         "image/height, image/width say 64 x 64); replace the shard"), line
