"""Small files of a run directory (configs, schedule, metrics), written so that a failure
mid-write (a full disk, a kill) never leaves a truncated or half-replaced file.

Whole files are written under a temporary name and renamed over the old one (tf.io.gfile, so
a `gs://` model_dir works too); a line appended to a JSONL file is rolled back if it could not
be written whole. `resolve_checkpoint` finds the checkpoint a path or a run directory means.
"""

import os
from typing import Optional

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


def resolve_checkpoint(checkpoint: Optional[str], model_dir: Optional[str] = None) -> str:
  """A checkpoint prefix from a prefix, a directory (its latest checkpoint) or a model_dir.

  Raises FileNotFoundError naming what was looked at.
  """
  for path in (checkpoint, model_dir):
    if not path:
      continue
    if tf.io.gfile.isdir(path):
      latest = tf.train.latest_checkpoint(path)
      if latest:
        return latest
      raise FileNotFoundError(f"no checkpoint in directory {path} (no 'checkpoint' index file "
                              "naming one)")
    if tf.io.gfile.exists(path + ".index"):
      return path
    raise FileNotFoundError(f"checkpoint {path}: neither a directory nor a checkpoint prefix "
                            f"({path}.index does not exist)")
  raise FileNotFoundError("no checkpoint: pass --checkpoint (a prefix or a directory) or a "
                          "--model_dir that holds one")
