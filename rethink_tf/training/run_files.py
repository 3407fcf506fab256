"""Small files of a run directory (configs, schedule, metrics), written so that a failure
mid-write (a full disk, a kill) never leaves a truncated or half-replaced file.

Whole files are written under a temporary name and renamed over the old one (tf.io.gfile, so
a `gs://` model_dir works too); a line appended to a JSONL file is rolled back if it could not
be written whole.
"""

import os

import tensorflow as tf


def write_text(path: str, text: str):
  """Replaces `path` with `text`: the old content stays until the new one is complete."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise


def append_line(path: str, line: str):
  """Appends one line (local files); on a failed write the file is cut back to its old size,
  so readers never see a partial line."""
  with open(path, "a") as f:
    size = f.tell()
    try:
      f.write(line.rstrip("\n") + "\n")
      f.flush()
      os.fsync(f.fileno())
    except OSError:
      f.truncate(size)
      raise
