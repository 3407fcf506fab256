"""Odd images inside intact records, through the input pipeline's decode path: every legal image
(1 px sides, extreme aspect ratios, grayscale, RGBA, palette and 16-bit PNGs, CMYK and
progressive JPEGs, animated GIFs, BMP, WebP) decodes as Pillow decodes it; a corrupt payload and
an image of another size than its features stop the stream with one line that
`damaged_records.locate` turns into the shard, the record and the reason, and
`verify_tfrecords` lists exactly those."""

import glob

import numpy as np
import pytest
import tensorflow as tf
from odd_records import REFUSED, USABLE, expected_pixels, odd_record, write_shard

from rethink_tf import config
from rethink_tf.data import damaged_records, verify_tfrecords
from rethink_tf.data.input_pipeline import InputConfig, checked_decode, example_decoder

# Lossy kinds: TensorFlow's and Pillow's libjpeg builds differ by a few levels.
JPEG_TOLERANCE = {"cmyk_jpeg": (2.0, 32), "progressive_jpeg": (2.0, 32)}


@pytest.fixture(scope="module")
def tiny_records():
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  files = sorted(glob.glob(InputConfig().prepare().train_pattern))
  config.gin.clear_config()
  return [r.numpy() for r in tf.data.TFRecordDataset(files).take(16)]


@pytest.fixture(scope="module")
def decode():
  return tf.function(checked_decode(example_decoder(include_mask=True), training=True))


@pytest.mark.parametrize("kind", sorted(USABLE))
def test_a_legal_image_decodes_as_pillow_decodes_it(tiny_records, decode, kind):
  record = odd_record(tiny_records[1], kind)
  data = decode(tf.constant(record))
  example = tf.train.Example.FromString(record).features.feature
  expected = expected_pixels(example["image/encoded"].bytes_list.value[0])
  image = data["image"].numpy()
  assert image.shape == expected.shape == (example["image/height"].int64_list.value[0],
                                           example["image/width"].int64_list.value[0], 3)
  diff = np.abs(image.astype(int) - expected.astype(int))
  mean, peak = JPEG_TOLERANCE.get(kind, (0.0, 0))
  assert diff.mean() <= mean and diff.max() <= peak, (diff.mean(), diff.max())
  # The instances are still there, in the record's own coordinates.
  assert data["groundtruth_boxes"].shape[0] == len(
      example["image/object/bbox/ymin"].float_list.value)


@pytest.mark.parametrize("kind, reason", [
    ("corrupt_payload", r"it does not decode as a detection example"),
    ("size_mismatch", r"image/encoded decodes to 64 x 72 pixels but image/height, image/width say "
     r"64 x 64"),
])
def test_a_damaged_record_stops_with_its_shard_record_and_reason(tiny_records, decode, tmp_path,
                                                                 kind, reason):
  records = list(tiny_records[:6])
  records[4] = odd_record(records[4], kind)
  path = str(tmp_path / "train-00000-of-00001")
  offsets = write_shard(path, records)
  with pytest.raises(tf.errors.InvalidArgumentError, match=reason) as raised:
    for r in records:
      decode(tf.constant(r))
  assert damaged_records.is_damaged_input(raised.value)
  found = damaged_records.locate([path], raised.value)
  assert [(p.shard, p.record, p.offset) for p in found] == [(path, 4, offsets[4])]
  # The located reason is verify's, the most specific one.
  _, problems = verify_tfrecords.verify_shard(path)
  assert [(p.record, p.message) for p in problems] == [(4, found[0].message)]
  assert damaged_records.describe(found[0]) == (f"{path}: record 4 at byte {offsets[4]} "
                                                f"({found[0].message})")


def test_verify_lists_exactly_the_records_the_pipeline_refuses(tiny_records, tmp_path):
  kinds = sorted(USABLE) + list(REFUSED)
  records = [odd_record(r, k) for r, k in zip(tiny_records, kinds)]
  path = str(tmp_path / "odd-00000-of-00001")
  write_shard(path, records)
  _, problems = verify_tfrecords.verify_shard(path)
  messages = {kinds[p.record]: p.message for p in problems}
  assert set(messages) == set(REFUSED), messages
  assert messages["corrupt_payload"].startswith("image/encoded (") and messages[
      "corrupt_payload"].endswith("bytes) does not decode (corrupt or cut short)")
  assert messages["size_mismatch"] == ("image/encoded decodes to 64 x 72 pixels but image/height, "
                                       "image/width say 64 x 64")
