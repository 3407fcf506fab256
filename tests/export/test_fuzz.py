"""Fuzzing what users send: every request to the exported tiny model's three signatures, and
every record through the input pipeline's decode path, is either used or refused with an
InvalidArgumentError that names the input and its batch index (the record, for the pipeline)
in printable text. Anything else fails the test.

Inputs (hypothesis, derandomized: the same examples on every run): encoded images of every
format TensorFlow reads (JPEG baseline and progressive; PNG gray, RGB, RGBA, palette and 16-bit;
GIF, animated too; BMP; WebP) at sizes from 1 px to strips of 1:20000, each whole, cut short at a
random offset, with bytes flipped at random offsets or with bytes appended; tf.train.Example
protos carrying them, with features of the wrong type or count, random bytes, and records with
flipped bytes; uint8 tensors of random rank and shape. The default suite runs a bounded number
of examples; `-m slow` runs the `slow` variant with fifty times more.
"""

import collections
import glob
import io
import re

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rethink_tf import config
from rethink_tf.data import damaged_records
from rethink_tf.data.input_pipeline import InputConfig, checked_decode, example_decoder
from rethink_tf.data.verify_tfrecords import example_problem
from rethink_tf.inference import resolve_checkpoint
from rethink_tf.serving.export_saved_model import export

TINY = "gin_configs/testing/tiny.gin"
# Outcome counts per path, printed at the end of the module (`pytest -s`).
COUNTS = collections.defaultdict(collections.Counter)
DEFAULT_EXAMPLES = {"image_bytes": 60, "tf_example": 40, "serving_default": 30, "pipeline": 60}
SLOW_FACTOR = 50


def _settings(path: str, slow: bool = False):
  return settings(max_examples=DEFAULT_EXAMPLES[path] * (SLOW_FACTOR if slow else 1),
                  derandomize=True,
                  deadline=None,
                  database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- what is sent --------------------------------------------------------------------------------

FORMATS = ("jpeg", "jpeg_progressive", "png_gray", "png_rgb", "png_rgba", "png_palette", "png_16",
           "gif", "gif_animated", "bmp", "webp")
MAX_SIDE = {"webp": 16383}  # the format's own limit


@st.composite
def image_sizes(draw):
  """(height, width): small images down to 1 px, or strips up to 1:20000 either way."""
  if draw(st.booleans()):
    return draw(st.integers(1, 48)), draw(st.integers(1, 48))
  short, long = draw(st.integers(1, 3)), draw(st.integers(100, 20000))
  return (short, long) if draw(st.booleans()) else (long, short)


def encode(fmt: str, height: int, width: int, seed: int) -> bytes:
  side = MAX_SIDE.get(fmt)
  if side:
    height, width = min(height, side), min(width, side)
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
  image = Image.fromarray(pixels)
  buf = io.BytesIO()
  if fmt.startswith("jpeg"):  # Pillow cannot write tall progressive JPEGs of noise
    return tf.io.encode_jpeg(pixels, quality=90, progressive=fmt == "jpeg_progressive").numpy()
  elif fmt == "png_16":
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(buf, "PNG")
  elif fmt.startswith("png"):
    mode = {"png_gray": "L", "png_rgb": "RGB", "png_rgba": "RGBA", "png_palette": "P"}[fmt]
    image.convert(mode).save(buf, "PNG")
  elif fmt == "gif_animated":
    image.save(buf, "GIF", save_all=True, append_images=[Image.fromarray(255 - pixels)])
  else:
    image.save(buf, {"gif": "GIF", "bmp": "BMP", "webp": "WEBP"}[fmt])
  return buf.getvalue()


@st.composite
def damage(draw, data: bytes):
  """(what was done, bytes): whole, truncated, bytes flipped, or bytes appended."""
  kind = draw(st.sampled_from(["whole", "truncated", "flipped", "appended"]))
  if kind == "truncated":
    return kind, data[:draw(st.integers(0, max(len(data) - 1, 0)))]
  if kind == "flipped":
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
      i = draw(st.integers(0, len(out) - 1))
      out[i] ^= draw(st.integers(1, 255))
    return kind, bytes(out)
  if kind == "appended":
    return kind, data + draw(st.binary(min_size=1, max_size=64))
  return kind, data


@st.composite
def encoded_images(draw):
  """(format, (height, width), what was done, bytes)."""
  fmt = draw(st.sampled_from(FORMATS))
  size = draw(image_sizes())
  data = encode(fmt, *size, draw(st.integers(0, 2**16)))
  kind, data = draw(damage(data))
  return fmt, size, kind, data


def _example(features) -> bytes:
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _bytes(*values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


@st.composite
def serialized_examples(draw, record: bytes):
  """Serialized requests for tf_example: an image in an Example, random bytes, features of the
  wrong type or count, or `record` with bytes flipped."""
  kind = draw(
      st.sampled_from(["image", "random_bytes", "int_feature", "two_images", "flipped_record"]))
  if kind == "image":
    return kind, _example({"image/encoded": _bytes(draw(encoded_images())[3])})
  if kind == "random_bytes":
    return kind, draw(st.binary(min_size=0, max_size=400))
  if kind == "int_feature":
    return kind, _example({
        "image/encoded":
            tf.train.Feature(int64_list=tf.train.Int64List(
                value=draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=3))))
    })
  if kind == "two_images":
    return kind, _example({"image/encoded": _bytes(record[:50], record[50:])})
  return kind, draw(damage(record))[1]


# -- the model and what it answers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_reference_run, tmp_path_factory):
  """(loaded export, a normal encoded image, a normal record, its detections before the fuzz)."""
  model_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-3000:]
  config.parse_gin([TINY])
  cfg = InputConfig().prepare()
  path = export(resolve_checkpoint(str(model_dir)), str(tmp_path_factory.mktemp("fuzz")))
  records = [
      x.numpy() for f in sorted(glob.glob(cfg.val_pattern)) for x in tf.data.TFRecordDataset(f)
  ]
  config.gin.clear_config()
  loaded = tf.saved_model.load(path)
  image = tf.train.Example.FromString(
      records[0]).features.feature["image/encoded"].bytes_list.value[0]
  before = _detections(loaded, image)
  assert before["num_detections"][0] > 0, "nothing detected: the comparison would be vacuous"
  return dict(loaded=loaded, image=image, record=records[0], before=before)


def _detections(loaded, image: bytes):
  out = loaded.signatures["image_bytes"](image_bytes=tf.constant([image]))
  return {k: v.numpy() for k, v in out.items()}


def _answer(path: str, call, name: str):
  """Calls the model; returns its outputs (served) or None (refused: the message must name
  `name`, a regex of the input and its index, in printable text); anything else raises."""
  try:
    out = call()
  except tf.errors.InvalidArgumentError as e:
    message = e.message
    assert all(c.isprintable() or c in "\n\t" for c in message), message
    named = re.search(r"assertion failed: \[(.*)\]", message)
    assert named and re.match(name, named.group(1)), message
    COUNTS[path]["refused"] += 1
    return None
  except Exception:
    COUNTS[path]["other"] += 1
    raise
  COUNTS[path]["served"] += 1
  return out


def _check_served(out, index: int, size=None):
  h, w = (int(s) for s in out["image_size"].numpy()[index])
  if size is not None:
    assert (h, w) == tuple(size)
  n = int(out["num_detections"].numpy()[index])
  boxes = out["detection_boxes"].numpy()[index, :n]
  assert np.all(boxes >= -1e-3) and np.all(boxes[:, [0, 2]] <= h +
                                           1e-3) and np.all(boxes[:, [1, 3]] <= w + 1e-3)


def _send_after_a_normal_one(served, signature: str, data: bytes):
  """Sends [a normal input, data] to `signature` (image_bytes or tf_example); its outputs, or
  None when refused (the message must name index 1)."""
  COUNTS[signature]["tried"] += 1
  key, name, normal = {
      "image_bytes": ("image_bytes", "image_bytes", served["image"]),
      "tf_example": ("examples", "examples", served["record"])
  }[signature]
  batch = tf.constant([normal, data])
  out = _answer(signature, lambda: served["loaded"].signatures[signature](**{key: batch}),
                name + r"\[1\]: ")
  if out is not None:
    _check_served(out, 0)
  return out


def _fuzz_image_bytes(served, sent):
  fmt, size, kind, data = sent
  out = _send_after_a_normal_one(served, "image_bytes", data)
  if out is not None:
    size = size if fmt != "webp" else tuple(min(s, MAX_SIDE["webp"]) for s in size)
    _check_served(out, 1, size if kind in ("whole", "appended") else None)
  elif kind == "whole":
    raise AssertionError(f"a whole {fmt} image of {size} was refused")


def _fuzz_tf_example(served, sent):
  out = _send_after_a_normal_one(served, "tf_example", sent[1])
  if out is not None:
    _check_served(out, 1)


@st.composite
def tensor_shapes(draw):
  """Shapes of random rank (1-5) with at most 400k elements; mostly [B, H, W, C]."""
  if draw(st.integers(0, 3)):
    batch, channels = draw(st.integers(0, 3)), draw(st.sampled_from([3, 3, 3, 0, 1, 4]))
    h, w = draw(st.sampled_from([(1, 1), (0, 5), (5, 0)]) | image_sizes())
    shape = [batch, h, w, channels]
  else:
    shape = draw(st.lists(st.integers(0, 40), min_size=1, max_size=5))
  return shape if np.prod(shape) <= 400_000 else [1, 1, 1, 3]


def _fuzz_serving_default(served, shape):
  COUNTS["serving_default"]["tried"] += 1
  images = tf.zeros(shape, tf.uint8)
  legal = len(shape) == 4 and shape[0] > 0 and shape[1] > 0 and shape[2] > 0 and shape[3] == 3
  out = _answer("serving_default", lambda: served["loaded"].signatures["serving_default"]
                (images=images), r"(empty batch|images)")
  assert (out is not None) == legal, shape
  if out is not None:
    for i in range(shape[0]):
      _check_served(out, i, shape[1:3])


# -- the input pipeline's decode path -----------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_decode():
  return tf.function(checked_decode(example_decoder(include_mask=True), training=True),
                     input_signature=[tf.TensorSpec([], tf.string)])


def _with_image(record: bytes, data: bytes, size) -> bytes:
  example = tf.train.Example.FromString(record)
  feature = example.features.feature
  feature["image/encoded"].bytes_list.value[:] = [data]
  feature["image/height"].int64_list.value[:] = [size[0]]
  feature["image/width"].int64_list.value[:] = [size[1]]
  return example.SerializeToString()


@st.composite
def pipeline_records(draw, record: bytes):
  """A training record with a fuzzed image (its features say the image's size before damage), or
  a fuzzed Example."""
  if draw(st.integers(0, 2)):
    fmt, size, _, data = draw(encoded_images())
    if fmt == "webp":
      size = tuple(min(s, MAX_SIDE["webp"]) for s in size)
    return _with_image(record, data, size)
  return draw(serialized_examples(record))[1]


def _fuzz_pipeline(decode, record: bytes):
  COUNTS["pipeline"]["tried"] += 1
  try:
    data = decode(tf.constant(record))
  except tf.errors.InvalidArgumentError as e:
    message = e.message
    assert all(c.isprintable() or c in "\n\t" for c in message), message
    assert damaged_records.is_damaged_input(e), message
    # What the pipeline refuses, verify lists (and skip_damaged_records drops).
    assert example_problem(record) is not None, message
    COUNTS["pipeline"]["refused"] += 1
    return
  except Exception:
    COUNTS["pipeline"]["other"] += 1
    raise
  COUNTS["pipeline"]["served"] += 1
  assert tuple(data["image"].shape[:2]) == (int(data["height"]), int(data["width"]))


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report_counts():
  yield
  for path, counts in sorted(COUNTS.items()):
    print(f"fuzz {path}: tried {counts['tried']}, served {counts['served']}, refused (named) "
          f"{counts['refused']}, other {counts['other']}")


def _given(path, strategy, check, slow):
  """A hypothesis test of `check(fixture, example)` over `strategy(fixture)`."""

  def test(fixture, data):
    check(fixture, data.draw(strategy(fixture)))

  return _settings(path, slow)(given(data=st.data())(test))


_image_bytes = lambda slow: _given("image_bytes", lambda s: encoded_images(), _fuzz_image_bytes,
                                   slow)
_tf_example = lambda slow: _given("tf_example", lambda s: serialized_examples(s["record"]),
                                  _fuzz_tf_example, slow)
_serving_default = lambda slow: _given("serving_default", lambda s: tensor_shapes(),
                                       _fuzz_serving_default, slow)


def test_fuzz_image_bytes(served):
  _image_bytes(False)(served)


def test_fuzz_tf_example(served):
  _tf_example(False)(served)


def test_fuzz_serving_default(served):
  _serving_default(False)(served)


def test_fuzz_input_pipeline_decode(served, pipeline_decode):
  _given("pipeline", lambda d: pipeline_records(served["record"]), _fuzz_pipeline,
         False)(pipeline_decode)


@pytest.mark.slow
def test_fuzz_every_path_fifty_times_longer(served, pipeline_decode):
  _image_bytes(True)(served)
  _tf_example(True)(served)
  _serving_default(True)(served)
  _given("pipeline", lambda d: pipeline_records(served["record"]), _fuzz_pipeline,
         True)(pipeline_decode)


def test_served_detections_are_unchanged_after_the_fuzz(served):
  """The same loaded model answers a normal image exactly as before the fuzz (nothing is
  cached or left behind by a refused request)."""
  assert sum(c["tried"] for c in COUNTS.values()) > 0, "run with the fuzz tests above"
  after = _detections(served["loaded"], served["image"])
  assert set(after) == set(served["before"])
  for k, v in served["before"].items():
    np.testing.assert_array_equal(after[k], v, err_msg=k)
