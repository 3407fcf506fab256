"""Damaged records of TFRecord shards (a bad disk, an interrupted copy): which shard, and readable
copies without them.

TensorFlow's reader checks each record's two CRCs and stops the dataset with a DataLossError,
"corrupted record at N" or "truncated record at N", where N is the record's start (its header
is bad) or its start + 12 (its data is bad), and names no file. It cannot go on inside that
shard, so a deterministic input stream dies at the same record after every restart.

- `locate(files, error)`: the shard and record an error came from (each shard's record headers
  walked up to N, then TF's reader over the shard that has a record there). The input
  pipeline's own stop for a record that reads but does not decode, or whose image is not the
  size its features say (`input_pipeline.checked_decode`: "damaged record #ID: reason"), is
  located by the record's fingerprint.
- `repair(files, directory)`: for `InputConfig.skip_damaged_records`: every shard read once;
  a damaged one is replaced by a copy of its readable records (TF's reader resumed after each
  damaged record, past a bad header by the next position whose length CRC holds), and what was
  skipped is listed. Results are kept per shard size and modification time, so a restart does
  not read the shards again.

Record framing (TFRecord): uint64 length, uint32 masked CRC32C of the length, the data, uint32
masked CRC32C of the data.
"""

import json
import os
import re
import struct
import tempfile
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from rethink_tf.data.decode_guard import DAMAGED_RECORD, damaged_record_id
from rethink_tf.data.verify_tfrecords import (
    FOOTER_BYTES,
    HEADER_BYTES,
    Problem,
    example_problem,
    verify_shard,
)

_ERROR = re.compile(r"(corrupted|truncated) record at (\d+)")
_DAMAGED = re.compile(DAMAGED_RECORD + r" (#\d+): ([^\]\n]*)")
SCAN_FILE = "scan.json"


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC32C (Castagnoli) of `data`; used on 8-byte headers only (pure Python)."""
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  c ^= 0xFFFFFFFF
  return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def error_offset(error: Exception) -> Optional[Tuple[str, int]]:
  """("corrupted" or "truncated", N) from a TF reader's DataLossError, or None."""
  m = _ERROR.search(getattr(error, "message", None) or str(error))
  return (m.group(1), int(m.group(2))) if m else None


def is_damaged_input(error: Exception) -> bool:
  """True for an input stream's error about a record: unreadable (TF's DataLossError) or not
  decodable as the pipeline needs it (`checked_decode`'s stop)."""
  return isinstance(
      error, tf.errors.DataLossError) or (isinstance(error, tf.errors.InvalidArgumentError) and
                                          _DAMAGED.search(_message(error)) is not None)


def _message(error: Exception) -> str:
  return getattr(error, "message", None) or str(error)


def error_text(error: Exception) -> str:
  """What an input error says about its record, in one line without TF's op noise."""
  text = _message(error)
  m = _DAMAGED.search(text) or _ERROR.search(text)
  return m.group(0) if m else text.strip().splitlines()[0]


def describe(p: Problem) -> str:
  """'SHARD: record I at byte OFFSET (what TF said)': one damaged record, for error lines."""
  what = p.message.split(" (the reader stops")[0]
  return f"{p.shard}: record {p.record} at byte {p.offset} ({what})"


def _record_starts(path: str, limit: int) -> List[int]:
  """Start offsets of the records of `path` up to byte `limit`, from their length fields."""
  starts, pos = [], 0
  size = tf.io.gfile.stat(path).length
  with tf.io.gfile.GFile(path, "rb") as f:
    while pos <= limit and pos + HEADER_BYTES <= size:
      starts.append(pos)
      f.seek(pos)
      (length,) = struct.unpack("<Q", f.read(8))
      pos += HEADER_BYTES + length + FOOTER_BYTES
  return starts


def _locate_by_id(files: Sequence[str], record_id: str, reason: str) -> List[Problem]:
  """The records of `files` whose fingerprint is `record_id` ('#N'), with what is wrong."""
  hits = []
  for path in files:
    offset = 0
    records = tf.data.TFRecordDataset(path).map(lambda s: (damaged_record_id(s), s))
    for index, (rid, serialized) in enumerate(records):
      record = serialized.numpy()
      if rid.numpy().decode() == record_id:
        hits.append(Problem(path, offset, index, example_problem(record) or reason))
      offset += HEADER_BYTES + len(record) + FOOTER_BYTES
  return hits


def locate(files: Sequence[str], error: Exception) -> List[Problem]:
  """The damaged records that explain an input stream's error, among `files`: a reader's
  DataLossError or the pipeline's stop for a record that does not decode."""
  damaged = _DAMAGED.search(_message(error))
  if damaged:
    return _locate_by_id(files, damaged.group(1), damaged.group(2))
  found = error_offset(error)
  if found is None:
    return []
  _, n = found
  hits = []
  for path in files:
    starts = set(_record_starts(path, n))
    if n in starts or n - HEADER_BYTES in starts:
      hits += [p for p in verify_shard(path)[1] if p.offset in (n, n - HEADER_BYTES)]
  return hits


def _resync(data: bytes, pos: int) -> int:
  """The next position at or after `pos` where a record header's length CRC holds and its
  record fits in `data` (len(data) if none)."""
  end = len(data) - HEADER_BYTES - FOOTER_BYTES
  while pos <= end:
    head = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", head)
    if (pos + HEADER_BYTES + length + FOOTER_BYTES <= len(data) and
        struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(head)):
      return pos
    pos += 1
  return len(data)


def readable_records(path: str) -> Tuple[List[bytes], List[Problem]]:
  """(the shard's readable tf.train.Example records in order, [Problem] of what was left out)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  records, problems, base = [], [], 0
  with tempfile.TemporaryDirectory() as scratch:
    current = path
    while base < len(data):
      pos = 0
      try:
        for serialized in tf.data.TFRecordDataset(current):
          record = serialized.numpy()
          problem = example_problem(record)
          if problem:
            problems.append(Problem(path, base + pos, len(records) + len(problems), problem))
          else:
            records.append(record)
          pos += HEADER_BYTES + len(record) + FOOTER_BYTES
        break
      except tf.errors.DataLossError as e:
        kind, n = error_offset(e) or ("corrupted", pos)
        start = base + pos
        problems.append(
            Problem(path, start,
                    len(records) + len(problems), f"{kind} record at {base + n}"))
        if kind == "truncated":
          break  # the file ends inside this record
        if n == pos + HEADER_BYTES:  # the header holds: the next record follows this one
          (length,) = struct.unpack("<Q", data[start:start + 8])
          base = start + HEADER_BYTES + length + FOOTER_BYTES
        else:
          base = _resync(data, start + 1)
        current = os.path.join(scratch, f"tail-{base}")
        with open(current, "wb") as f:
          f.write(data[base:])
  return records, problems


def repair(files: Sequence[str], directory: str) -> Tuple[List[str], List[Problem]]:
  """(files to read instead of `files`, [Problem] skipped): damaged shards replaced by copies of
  their readable records written to `directory`."""
  tf.io.gfile.makedirs(directory)
  scan_path = os.path.join(directory, SCAN_FILE)
  scan = {}
  if tf.io.gfile.exists(scan_path):
    with tf.io.gfile.GFile(scan_path) as f:
      scan = json.load(f)
  out, skipped = [], []
  for path in files:
    stat = tf.io.gfile.stat(path)
    key = [stat.length, stat.mtime_nsec]
    entry = scan.get(path)
    copy = os.path.join(directory, f"{len(out):05d}-{os.path.basename(path)}")
    if not (entry and entry["key"] == key and
            (entry["copy"] is None or tf.io.gfile.exists(entry["copy"]))):
      _, problems = verify_shard(path)
      entry = {"key": key, "copy": None, "problems": []}
      if problems:
        records, problems = readable_records(path)
        with tf.io.TFRecordWriter(copy) as writer:
          for r in records:
            writer.write(r)
        entry.update(copy=copy, problems=[p.__dict__ for p in problems])
      scan[path] = entry
    out.append(entry["copy"] or path)
    skipped += [Problem(**p) for p in entry["problems"]]
  with tf.io.gfile.GFile(scan_path, "w") as f:
    json.dump(scan, f, indent=1)
  return out, skipped
