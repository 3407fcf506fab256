"""Mask pasting against a per-pixel bilinear reference (detectron2's grid_sample rule)."""

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from rethink_tf.layers.paste_masks import paste_masks
from rethink_tf.modeling.postprocess import full_resolution_masks, to_input_image


def _reference(mask, box, h, w):
  """Each pixel samples the box-relative mask bilinearly at its centre, zeros outside."""
  m = mask.shape[0]
  y0, x0, y1, x1 = box
  out = np.zeros((h, w))
  for y in range(h):
    for x in range(w):
      u = (x + 0.5 - x0) / max(x1 - x0, 1e-6) * m - 0.5
      v = (y + 0.5 - y0) / max(y1 - y0, 1e-6) * m - 0.5
      i0, j0 = int(np.floor(v)), int(np.floor(u))
      total = 0.0
      for i, wy in ((i0, 1 - (v - i0)), (i0 + 1, v - i0)):
        for j, wx in ((j0, 1 - (u - j0)), (j0 + 1, u - j0)):
          if 0 <= i < m and 0 <= j < m:
            total += wy * wx * mask[i, j]
      out[y, x] = total
  return out


def test_matches_per_pixel_bilinear_reference():
  rng = np.random.default_rng(0)
  masks = rng.uniform(size=(4, 7, 7)).astype(np.float32)
  # Fractional box, box partly outside the image, tiny box, box wider than the image.
  boxes = np.array([[3.3, 5.7, 17.2, 20.1], [-4.0, 20.5, 10.0, 40.0], [8.0, 8.0, 8.6, 9.1],
                    [2.0, -10.0, 25.0, 50.0]], np.float32)
  got = paste_masks(masks, boxes, 24, 31).numpy()
  want = np.stack([_reference(m, b, 24, 31) for m, b in zip(masks, boxes)])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_full_mask_pastes_exactly_its_box():
  """A mask of ones, thresholded at 0.5, covers exactly the pixels whose centres are in the box
  (pixel-aligned box edges)."""
  box = np.array([[10.0, 20.0, 30.0, 50.0]], np.float32)
  got = paste_masks(np.ones((1, 28, 28), np.float32), box, 64, 64).numpy()[0] >= 0.5
  want = np.zeros((64, 64), bool)
  want[10:30, 20:50] = True
  np.testing.assert_array_equal(got, want)


def test_canvas_padding_is_empty_and_zero_width_box_pastes_nothing():
  masks = np.ones((2, 28, 28), np.float32)
  boxes = np.array([[0.0, 0.0, 40.0, 40.0], [5.0, 5.0, 5.0, 9.0]], np.float32)
  got = paste_masks(masks, boxes, 20, 30, canvas_height=40, canvas_width=50).numpy()
  assert got.shape == (2, 40, 50)
  assert np.all(got[0, :20, :30] > 0.5) and got[0, 20:].sum() == 0 and got[0, :, 30:].sum() == 0
  assert np.isfinite(got).all() and got[1].sum() == 0


@pytest.mark.parametrize("binary", [True, False])
def test_to_input_image_rescales_clips_and_pastes_only_valid_detections(binary):
  boxes = np.array([[10.0, 20.0, 30.0, 50.0], [0.0, -4.0, 80.0, 200.0], [0, 0, 0, 0]], np.float32)
  masks = np.ones((3, 28, 28), np.float32)
  out_boxes, rles = to_input_image(boxes, masks, 2, tf.constant(2.0), tf.constant([30, 60]))
  np.testing.assert_allclose(out_boxes.numpy()[:2], [[5, 10, 15, 25], [0, 0, 30, 60]])
  assert rles.shape == (3,) and rles.numpy()[2] == b""  # beyond num_detections: empty
  decoded = mask_utils.decode({"size": [30, 60], "counts": rles.numpy()[0]})
  assert decoded[5:15, 10:25].min() == 1 and decoded.sum() == 10 * 15
  pasted = full_resolution_masks(masks,
                                 out_boxes,
                                 2,
                                 tf.constant([30, 60]),
                                 tf.constant([40, 70]),
                                 binary=binary)
  assert pasted.dtype == (tf.uint8 if binary else tf.float32) and pasted.shape == (3, 40, 70)
  p = pasted.numpy()
  assert p[0, 5:15, 10:25].min() >= (1 if binary else 0.5) and p[0, :5].sum() == 0
  assert p[2].sum() == 0 and p[:, 30:].sum() == 0 and p[:, :, 60:].sum() == 0
  for i in range(2):
    counts = rles.numpy()[i]
    np.testing.assert_array_equal(mask_utils.decode({"size": [30, 60], "counts": counts}),
                                  p[i, :30, :60] >= 0.5)
