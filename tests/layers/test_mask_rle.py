"""COCO RLE strings computed in the graph equal pycocotools' `mask.encode` of the full-image
paste, and the TF-only client's decoder reads them back."""

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from rethink_tf.layers.mask_rle import encode_masks, run_lengths_to_string, window_run_lengths
from rethink_tf.layers.paste_masks import paste_masks, paste_window
from rethink_tf.serving.predict import decode_rle


def _coco(mask):
  return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


@tf.function(autograph=False,
             input_signature=[tf.TensorSpec([None, None], tf.bool)] +
             [tf.TensorSpec([], tf.int32)] * 4)
def _window_string(window, y0, x0, h, w):
  return run_lengths_to_string(window_run_lengths(window, y0, x0, h, w))


def test_window_encoding_equals_pycocotools_on_random_windows():
  rng = np.random.default_rng(0)
  for trial in range(200):
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    # Every fifth window spans the image's full height: runs of 1s cross column boundaries.
    wh = h if trial % 5 == 0 else int(rng.integers(0, h - y0 + 1))
    y0 = 0 if trial % 5 == 0 else y0
    ww = int(rng.integers(0, w - x0 + 1))
    window = rng.uniform(size=(wh, ww)) < rng.uniform()
    full = np.zeros((h, w), bool)
    full[y0:y0 + wh, x0:x0 + ww] = window
    got = _window_string(tf.constant(window, shape=[wh, ww]), y0, x0, h, w).numpy()
    assert got == _coco(full), (trial, h, w, y0, x0, wh, ww)
    np.testing.assert_array_equal(decode_rle(got, h, w), full)


def test_large_counts_and_edge_cases():
  """Runs over 2^20 (several 5-bit groups, negative differences), a mask whose first pixel is
  set (a 0-length first run), an all-ones and an empty image."""
  h, w = 3024, 4032
  full = np.zeros((h, w), bool)
  full[100:3000, 5:4000] = True
  full[0, 0] = True
  for mask in (full, np.ones((7, 5), bool), np.zeros((7, 5), bool)):
    got = _window_string(tf.constant(mask), 0, 0, *mask.shape).numpy()
    assert got == _coco(mask)
    np.testing.assert_array_equal(decode_rle(got, *mask.shape), mask)


def test_encode_masks_equals_the_full_image_paste():
  rng = np.random.default_rng(1)
  d, m, h, w = 40, 28, 100, 120
  masks = rng.uniform(size=(d, m, m)).astype(np.float32)
  masks[:8] = 1.0  # saturated probabilities: the box edges decide
  corners = rng.uniform(-10, 130, size=(d, 2, 2))
  boxes = np.concatenate([corners.min(1), corners.max(1)], 1)[:, [0, 1, 2, 3]]
  boxes = np.clip(boxes, 0, [h, w, h, w]).astype(np.float32)
  boxes[:4] = np.round(boxes[:4]) + 0.5  # pixel centres exactly on the box edges
  boxes[4] = [0, 0, h, w]  # a box as large as the image
  n = 30
  got = encode_masks(masks, boxes, n, h, w).numpy()
  full = paste_masks(masks, boxes, h, w).numpy() >= 0.5
  assert [_coco(full[i]) for i in range(n)] == list(got[:n])
  assert list(got[n:]) == [b""] * (d - n)
  assert sum(full[:n].reshape(n, -1).any(1)) > n // 2  # most masks non-empty: not vacuous


def test_paste_window_covers_every_pixel_at_or_over_half():
  rng = np.random.default_rng(2)
  mask = np.ones((28, 28), np.float32)
  for _ in range(20):
    y0, x0 = rng.uniform(-5, 40, 2)
    box = np.array([y0, x0, y0 + rng.uniform(0, 30), x0 + rng.uniform(0, 30)], np.float32)
    full = paste_masks(mask[None], box[None], 50, 60).numpy()[0]
    probs, wy, wx = (v.numpy() for v in paste_window(mask, box, 50, 60))
    inside = np.zeros((50, 60), bool)
    inside[wy:wy + probs.shape[0], wx:wx + probs.shape[1]] = True
    assert not (full[~inside] >= 0.5).any()
    np.testing.assert_array_equal(probs, full[inside].reshape(probs.shape))


def test_client_decoder_refuses_counts_of_another_size():
  counts = _coco(np.ones((4, 4), bool))
  with pytest.raises(ValueError, match="cover 16 pixels, the image has 20"):
    decode_rle(counts, 4, 5)
