"""Decoding that reports a failure instead of raising it.

A TensorFlow graph cannot catch an op's error: a corrupt PNG (valid header, damaged IDAT) fails
`DecodeImage` with TensorFlow's own message, which names no input, and a malformed serialized
`tf.train.Example` fails `ParseExample` with a message that quotes the record's raw bytes (not
UTF-8: TensorFlow's Python layer then raises UnicodeDecodeError in the client). `guarded` runs
such an op inside a one-element `tf.data` pipeline whose `ignore_errors` drops the element when
the op fails, so the graph gets a flag instead of the error, whatever the error was, and the
caller raises its own message naming the input and the reason. It costs one small dataset per
call: served latency and training input throughput were within run-to-run noise of the
unguarded decode.

`image_problem` is the same decode run eagerly on a record's bytes, for the tools that check
records before a run (`verify_tfrecords`, `damaged_records.repair`, the COCO converter).
"""

from typing import Callable, Optional, Tuple

import tensorflow as tf

from rethink_tf.data.image_preprocessing import decode_image

# Start of the message of a record that stops the input stream: DAMAGED_RECORD #<id>: <reason>,
# <id> from `damaged_record_id` (`damaged_records.locate` finds the record by it).
DAMAGED_RECORD = "damaged record"
_ID_BUCKETS = 2**62


def damaged_record_id(serialized):
  """'#N': a fingerprint of a serialized record (string scalar; the same on every run)."""
  return tf.strings.join(
      ["#", tf.strings.as_string(tf.strings.to_hash_bucket_fast(serialized, _ID_BUCKETS))])


def guarded(fn: Callable, inputs, fallback) -> Tuple[object, tf.Tensor]:
  """(fn(inputs), True) if fn succeeds, else (fallback, False); never raises fn's error.

  Args:
    fn: a function of `inputs` (a tensor or a tuple of tensors) returning tensors with the
      structure and dtypes of `fallback`; shapes may differ (the result's static shape is the
      most specific one compatible with both).
    fallback: tensors returned when fn fails.
  """
  ds = tf.data.Dataset.from_tensors(inputs).map(lambda *a: (fn(*a), True))
  ds = ds.ignore_errors(log_warning=False)
  failed = tf.data.Dataset.from_tensors((fallback, False))
  return ds.concatenate(failed).take(1).get_single_element()


def decode_or_flag(encoded, jpeg_dct_method: str = ""):
  """(uint8 [H, W, 3], decoded: bool scalar) of one encoded image; [1, 1, 3] zeros and False
  when the bytes do not decode (animated GIFs give their first frame)."""
  image, ok = guarded(lambda e: decode_image(e, jpeg_dct_method, expand_animations=False), encoded,
                      tf.zeros([1, 1, 3], tf.uint8))
  image.set_shape([None, None, 3])
  return image, ok


def image_problem(encoded: bytes,
                  height: Optional[int] = None,
                  width: Optional[int] = None) -> Optional[str]:
  """What keeps an encoded image from being used as its record says (eager), or None.

  The image must decode with the input pipeline's decoder, and to height x width pixels when
  they are given (a record's `image/height` and `image/width`: its boxes, masks and keypoints
  are in those coordinates).
  """
  image, ok = decode_or_flag(tf.constant(encoded))
  if not bool(ok):
    return f"image/encoded ({len(encoded)} bytes) does not decode (corrupt or cut short)"
  h, w = (int(s) for s in image.shape[:2])
  if height is not None and (h, w) != (int(height), int(width)):
    return (f"image/encoded decodes to {h} x {w} pixels but image/height, image/width say "
            f"{int(height)} x {int(width)}")
  return None
