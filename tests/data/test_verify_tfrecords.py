"""Verifying shards before a run: flipped bytes inside a record and a truncated shard are named
with the shard and the byte offset of the bad record; sound shards pass; the command exits 1."""

import glob
import shutil
import subprocess
import sys

import tensorflow as tf

from rethink_tf import config
from rethink_tf.data import verify_tfrecords
from rethink_tf.data.input_pipeline import InputConfig

from conftest import REPO_ROOT


def _shard(tmp_path):
  """A copy of the tiny synthetic training shard and the byte offsets of its records."""
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  source = sorted(glob.glob(InputConfig().prepare().train_pattern))[0]
  path = str(tmp_path / "train-00000-of-00001.tfrecord")
  shutil.copy(source, path)
  offsets, offset = [], 0
  for record in tf.data.TFRecordDataset(path):
    offsets.append(offset)
    offset += 16 + len(record.numpy())
  return path, offsets, offset


def test_sound_shards_pass(tmp_path):
  path, offsets, _ = _shard(tmp_path)
  shards, records, problems = verify_tfrecords.verify(str(tmp_path / "*.tfrecord"))
  assert shards == [path] and records == len(offsets) > 3 and problems == []


def test_flipped_bytes_and_truncation_name_shard_and_offset(tmp_path):
  path, offsets, size = _shard(tmp_path)
  flipped = str(tmp_path / "flipped.tfrecord")
  data = bytearray(open(path, "rb").read())
  for i in range(offsets[3] + 100, offsets[3] + 108):  # inside record 3's data
    data[i] ^= 0xFF
  open(flipped, "wb").write(bytes(data))
  truncated = str(tmp_path / "truncated.tfrecord")
  open(truncated, "wb").write(bytes(open(path, "rb").read()[:size - 50]))

  n, problems = verify_tfrecords.verify_shard(flipped)
  assert n == 3 and len(problems) == 1
  p = problems[0]
  assert (p.shard, p.record, p.offset) == (flipped, 3, offsets[3]), p
  assert "corrupted record" in p.message and "rest of the shard is unread" in p.message

  n, problems = verify_tfrecords.verify_shard(truncated)
  last = len(offsets) - 1
  assert n == last and len(problems) == 1
  assert (problems[0].record, problems[0].offset) == (last, offsets[last]), problems[0]
  assert "truncated" in problems[0].message

  r = subprocess.run([
      sys.executable, "-m", "rethink_tf.data.verify_tfrecords", f"--pattern={tmp_path}/*.tfrecord"
  ],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert f"{flipped}: record 3 at byte {offsets[3]}: " in lines[0]
  assert f"{truncated}: record {last} at byte {offsets[last]}: " in lines[1]
  assert lines[-1] == (f"3 shard(s), {len(offsets) + 3 + last} record(s) read: "
                       "2 problem(s) in 2 shard(s)")
  assert "Traceback" not in r.stderr


def test_a_record_that_is_not_an_example_is_named(tmp_path):
  path = str(tmp_path / "odd.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    w.write(tf.train.Example().SerializeToString())
    w.write(b"\xff\x00 not a proto")
  _, problems = verify_tfrecords.verify_shard(path)
  assert [(p.record, p.offset) for p in problems] == [(0, 0), (1, 16)]
  assert "missing features" in problems[0].message
  assert "not a tf.train.Example" in problems[1].message


def test_a_pattern_matching_nothing_is_an_error(tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "rethink_tf.data.verify_tfrecords", f"--pattern={tmp_path}/none-*"],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300)
  assert r.returncode == 1 and "matches no file" in r.stderr and "Traceback" not in r.stderr
