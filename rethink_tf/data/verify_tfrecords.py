r"""Reads every record of every TFRecord shard before a long run and lists what is wrong with it.

  python -m rethink_tf.data.verify_tfrecords --pattern='/data/coco/train-*.tfrecord'

A bad disk or an interrupted copy leaves shards whose records fail their checksum or end early;
the training input stream would die at the first one, at the same place after every restart.
This reads each shard with TensorFlow's reader (which checks every record's CRCs), parses every
record as the `tf.train.Example` our converter writes (`coco_tfrecord.py`: the image, its size
and decimal id, and per-instance boxes, classes and masks of equal counts), decodes its image
with the input pipeline's decoder (it must decode, to the size its `image/height` and
`image/width` say) and the rest of the record as the pipeline does, and prints one line per
problem naming the shard and the byte offset of the record, then a summary. Exit status 1 when
anything is wrong. TensorFlow's reader cannot continue past a damaged record, so the rest of that
shard is reported as unread: re-copy or re-convert the shard.
"""

import dataclasses
import functools
import os
import re
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import console  # noqa: E402
from rethink_tf.data.decode_guard import guarded, image_problem  # noqa: E402

# Features every record must have, and the per-instance ones that must have equal counts.
REQUIRED = ("image/encoded", "image/height", "image/width", "image/source_id")
PER_INSTANCE = ("image/object/bbox/ymin", "image/object/bbox/xmin", "image/object/bbox/ymax",
                "image/object/bbox/xmax", "image/object/class/label")
HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length
FOOTER_BYTES = 4  # uint32 masked CRC of the data


@dataclasses.dataclass(frozen=True)
class Problem:
  shard: str
  offset: int  # byte offset of the record in the shard
  record: int  # 0-based index of the record in the shard
  message: str

  def __str__(self):
    return f"{self.shard}: record {self.record} at byte {self.offset}: {self.message}"


def example_problem(serialized: bytes) -> Optional[str]:
  """What is wrong with one record's contents, or None."""
  try:
    example = tf.train.Example.FromString(serialized)
  except Exception as e:  # protobuf raises its own DecodeError
    return f"not a tf.train.Example ({type(e).__name__})"
  feature = example.features.feature
  missing = [k for k in REQUIRED if k not in feature]
  if missing:
    return f"missing features {missing}"
  if not feature["image/encoded"].bytes_list.value or not feature["image/encoded"].bytes_list.value[
      0]:
    return "empty image/encoded"

  def count(key):
    f = feature.get(key)
    if f is None:
      return 0
    return len(f.float_list.value) + len(f.int64_list.value) + len(f.bytes_list.value)

  counts = {k: count(k) for k in PER_INSTANCE}
  if len(set(counts.values())) > 1:
    return f"per-instance features of different lengths {counts}"
  if not feature["image/source_id"].bytes_list.value[:1] or not feature[
      "image/source_id"].bytes_list.value[0].isdigit():
    return "image/source_id is not a decimal number (evaluation reports the COCO image id)"
  # One decode for a sound record; the image alone is decoded again only to say what is wrong.
  if bool(_pipeline_reads(tf.constant(serialized))):
    return None
  height = (feature["image/height"].int64_list.value or [None])[0]
  width = (feature["image/width"].int64_list.value or [None])[0]
  problem = image_problem(feature["image/encoded"].bytes_list.value[0], height, width)
  return problem or ("a feature does not decode as the input pipeline reads it (image/object/mask "
                     "PNGs, boxes, labels, is_crowd or area of the wrong type)")


@functools.lru_cache(maxsize=1)
def _pipeline_check():
  """serialized -> True if the training input pipeline decodes it (one traced function)."""
  from rethink_tf.data import input_pipeline  # Model Garden's decoder: imported when needed
  decode = input_pipeline.checked_decode(input_pipeline.example_decoder(include_mask=True),
                                         training=True)
  return tf.function(
      lambda s: guarded(lambda r: tf.shape(decode(r)["image"]), s, tf.zeros([3], tf.int32))[1],
      input_signature=[tf.TensorSpec([], tf.string)])


def _pipeline_reads(serialized):
  return _pipeline_check()(serialized)


def verify_shard(path: str) -> tuple:
  """(records read, [Problem]) of one shard."""
  problems, offset, index = [], 0, 0
  iterator = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      serialized = next(iterator).numpy()
    except StopIteration:
      break
    except tf.errors.OpError as e:
      # TF's message ("corrupted record at N", N = where the data begins) with its op noise cut.
      text = getattr(e, "message", str(e))
      m = re.search(r"(corrupted|truncated) record at \d+", text)
      what = m.group(0) if m else text.splitlines()[0].strip()
      problems.append(
          Problem(path, offset, index,
                  f"{what} (the reader stops here: the rest of the shard is unread)"))
      break
    problem = example_problem(serialized)
    if problem:
      problems.append(Problem(path, offset, index, problem))
    offset += HEADER_BYTES + len(serialized) + FOOTER_BYTES
    index += 1
  return index, problems


def verify(pattern: str) -> tuple:
  """(shards, records read, [Problem]) of every file matching `pattern`; a pattern that matches
  nothing is a ValueError."""
  shards = sorted(tf.io.gfile.glob(pattern))
  if not shards:
    raise ValueError(f"--pattern {pattern!r} matches no file")
  records, problems = 0, []
  for path in shards:
    n, found = verify_shard(path)
    records += n
    problems += found
  return shards, records, problems


FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  try:
    shards, records, problems = verify(FLAGS.pattern)
  except ValueError as e:
    sys.exit(f"error: {e}")
  for p in problems:
    print(p)
  bad = len({p.shard for p in problems})
  print(f"{len(shards)} shard(s), {records} record(s) read: " +
        (f"{len(problems)} problem(s) in {bad} shard(s)" if problems else "no problem"))
  if problems:
    sys.exit(1)


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-verify-tfrecords`)."""
  flags.DEFINE_string("pattern", None, "Glob of the TFRecord shards to read.", required=True)
  app.run(main)


if __name__ == "__main__":
  console_main()
