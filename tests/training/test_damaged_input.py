"""Damaged training shards: the default run stops with one line naming the shard and record,
after a checkpoint at the last completed step, and stops the same way after a restart; with
InputConfig.skip_damaged_records the run completes and reports what it skipped."""

import glob
import os
import re
import struct
import subprocess

import pytest
import tensorflow as tf

from rethink_tf import config
from rethink_tf.data import damaged_records, verify_tfrecords
from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.training.input_damage import SKIPPED_SCALAR

from conftest import REPO_ROOT, TINY_TRAIN, run_tiny_evaluate


def _write(path, records):
  with tf.io.TFRecordWriter(path) as w:
    for r in records:
      w.write(r)
  offsets, offset = [], 0
  for r in records:
    offsets.append(offset)
    offset += 16 + len(r)
  return offsets, offset


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """The tiny training set in two shards of 16 records: 8 bytes flipped inside record 12 of the
  first, the second cut 50 bytes short (its last record truncated)."""
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  records = [
      r.numpy()
      for f in sorted(glob.glob(InputConfig().prepare().train_pattern))
      for r in tf.data.TFRecordDataset(f)
  ]
  config.gin.clear_config()
  root = tmp_path_factory.mktemp("damaged")
  flipped, truncated = str(root / "train-00000-of-00002"), str(root / "train-00001-of-00002")
  offsets_a, _ = _write(flipped, records[:16])
  offsets_b, size_b = _write(truncated, records[16:32])
  data = bytearray(open(flipped, "rb").read())
  for i in range(offsets_a[12] + 100, offsets_a[12] + 108):
    data[i] ^= 0xFF
  open(flipped, "wb").write(bytes(data))
  whole = open(truncated, "rb").read()
  open(truncated, "wb").write(whole[:size_b - 50])
  return dict(pattern=str(root / "train-*"),
              flipped=flipped,
              truncated=truncated,
              offsets_a=offsets_a,
              offsets_b=offsets_b,
              records=records)


def _train(shards, model_dir, *params):
  """The tiny run on the damaged shards: one compiled call of 20 steps (the damage is met inside
  it) and a 4-record shuffle buffer (records are read as training reaches them)."""
  return subprocess.run(TINY_TRAIN + [
      f"--model_dir={model_dir}", f"--gin_param=InputConfig.train_pattern='{shards['pattern']}'",
      "--gin_param=InputConfig.shuffle_buffer=4", "--gin_param=TrainConfig.steps_per_loop=20",
      *[f"--gin_param={p}" for p in params]
  ],
                        cwd=REPO_ROOT,
                        capture_output=True,
                        text=True,
                        timeout=600)


def test_stop_restart_then_skip(shards, tmp_path):
  model_dir = tmp_path / "run"
  a = shards["offsets_a"][12]
  expected = (f"error: unreadable training data: {shards['flipped']}: record 12 at byte {a} "
              f"(corrupted record at {a + 12}); checkpoint ")
  first = _train(shards, model_dir)
  assert first.returncode == 1, first.stderr[-3000:]
  line = first.stderr.strip().splitlines()[-1]
  assert line.startswith(expected), line
  assert "Traceback" not in first.stderr and "InputConfig.skip_damaged_records=True" in line
  step = int(re.search(r"holds step (\d+);", line).group(1))
  assert 0 < step < 20  # inside the one compiled call: its completed steps are kept
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest == str(model_dir / f"ckpt-{step}") and f"checkpoint {latest} holds" in line
  # The checkpoint's weights are those of its step: the optimizer applied exactly `step` updates.
  iterations = tf.train.load_checkpoint(latest).get_tensor("optimizer/_iterations/.ATTRIBUTES/"
                                                           "VARIABLE_VALUE")
  assert int(iterations) == step

  again = _train(shards, model_dir)
  assert again.returncode == 1 and again.stderr.strip().splitlines()[-1] == line
  assert tf.train.latest_checkpoint(str(model_dir)) == latest
  assert sorted(p for p in os.listdir(model_dir) if p.startswith("ckpt-")) == [
      f"ckpt-{step}.data-00000-of-00001", f"ckpt-{step}.index"
  ]

  skipping = _train(shards, model_dir, "InputConfig.skip_damaged_records=True")
  assert skipping.returncode == 0, skipping.stderr[-3000:]
  out = skipping.stdout
  b = shards["offsets_b"][15]
  assert (f"skipping damaged record: {shards['flipped']}: record 12 at byte {a} (corrupted "
          f"record at {a + 12})") in out
  assert (f"skipping damaged record: {shards['truncated']}: record 15 at byte {b} (truncated "
          f"record at {b})") in out
  assert f"resumed from {latest} at step {step}" in out
  assert out.count("skip_damaged_records: skipped 2 damaged training record(s) in 2") == 2
  assert "final: box AP" in out and tf.train.latest_checkpoint(str(model_dir)).endswith("-20")
  # The copies hold every readable record: 15 of each shard.
  copies = sorted(glob.glob(str(model_dir / "repaired_shards" / "*-train-*")))
  assert [sum(1 for _ in tf.data.TFRecordDataset(c)) for c in copies] == [15, 15]
  values = [
      float(tf.make_ndarray(v.tensor))
      for f in glob.glob(str(model_dir / "train" / "events.*"))
      for e in tf.compat.v1.train.summary_iterator(f)
      for v in e.summary.value
      if v.tag == SKIPPED_SCALAR
  ]
  assert values == [2.0, 2.0]  # at the resumed step and at the end

  # The verify command lists both problems.
  _, _, problems = verify_tfrecords.verify(shards["pattern"])
  assert [(p.shard, p.record) for p in problems] == [(shards["flipped"], 12),
                                                     (shards["truncated"], 15)]


def test_locate_names_a_truncated_shard_among_sound_ones(shards):
  error = None
  try:
    for _ in tf.data.TFRecordDataset(shards["truncated"]):
      pass
  except tf.errors.DataLossError as e:
    error = e
  assert error is not None
  found = damaged_records.locate([shards["flipped"], shards["truncated"]], error)
  assert [(p.shard, p.record, p.offset) for p in found] == [(shards["truncated"], 15,
                                                             shards["offsets_b"][15])]


def test_a_damaged_header_is_skipped_and_reading_resumes_after_it(shards, tmp_path):
  """Flipped bytes in a record's length field: the next record is found by its length CRC, so
  only the damaged record is lost."""
  path = str(tmp_path / "header.tfrecord")
  offsets, _ = _write(path, shards["records"][:6])
  data = bytearray(open(path, "rb").read())
  data[offsets[2] + 3] ^= 0x5A
  open(path, "wb").write(bytes(data))
  head = bytes(data[offsets[4]:offsets[4] + 8])
  assert damaged_records.masked_crc32c(head) == struct.unpack(
      "<I", bytes(data[offsets[4] + 8:offsets[4] + 12]))[0]
  records, problems = damaged_records.readable_records(path)
  assert records == shards["records"][:2] + shards["records"][3:6]
  assert [(p.record, p.offset, p.message) for p in problems
         ] == [(2, offsets[2], f"corrupted record at {offsets[2]}")]


def test_evaluation_names_a_damaged_validation_record(shards, tiny_reference_run, tmp_path):
  """`rethink_tf.evaluate` on a validation shard with a flipped byte: one line naming it."""
  model_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-2000:]
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  val = sorted(glob.glob(InputConfig().prepare().val_pattern))
  config.gin.clear_config()
  records = [x.numpy() for f in val for x in tf.data.TFRecordDataset(f)]
  path = str(tmp_path / "val-00000-of-00001")
  offsets, _ = _write(path, records)
  data = bytearray(open(path, "rb").read())
  data[offsets[5] + 40] ^= 0x01
  open(path, "wb").write(bytes(data))
  e = run_tiny_evaluate(model_dir, path)
  assert e.returncode == 1 and "Traceback" not in e.stderr, e.stderr[-3000:]
  assert e.stderr.strip().splitlines()[-1].startswith(
      f"error: unreadable validation data: {path}: record 5 at byte {offsets[5]} (corrupted "
      f"record at {offsets[5] + 12}); replace the shard")
