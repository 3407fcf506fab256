"""Anchors: Model Garden's (this project's default), detectron2's offset and Detectron's rounded
cell anchors, against each source's rule."""

import numpy as np

from rethink_tf.modeling import anchors as anchor_lib


def test_detectron_cell_anchors_are_py_faster_rcnns():
  """generate_anchors(stride 16, sizes 128/256/512): the table printed by Detectron's and
  py-faster-rcnn's generator (its docstring lists MATLAB's 1-based copy, one higher)."""
  np.testing.assert_array_equal(anchor_lib.detectron_cell_anchors(16, [128, 256, 512], [0.5, 1, 2]),
                                [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                                 [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                                 [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]])


def test_offset_moves_centres_and_ratios_are_width_over_height():
  default = anchor_lib.multilevel_anchors((64, 64), 2, 3, (0.5, 1.0, 2.0), 4.0)
  d2 = anchor_lib.multilevel_anchors((64, 64), 2, 3, (0.5, 1.0, 2.0), 4.0, offset=0.0)
  for level in (2, 3):
    a, b = default[level].numpy(), d2[level].numpy()
    stride = 2**level
    assert a.shape == (64 // stride * 64 // stride * 3, 4)
    np.testing.assert_allclose(a - b, 0.5 * stride)  # every corner, every anchor
    centre = (b[:, :2] + b[:, 2:]) / 2  # yx, rows (y, x, ratio)
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-5)
    np.testing.assert_allclose(centre[3], [0.0, stride], atol=1e-5)
    h, w = b[:3, 2] - b[:3, 0], b[:3, 3] - b[:3, 1]
    np.testing.assert_allclose(w / h, [0.5, 1.0, 2.0], rtol=1e-5)  # width / height
    np.testing.assert_allclose(np.sqrt(w * h), 4.0 * stride, rtol=1e-5)


def test_detectron_rounding_shifts_cell_anchors_by_stride():
  got = anchor_lib.multilevel_anchors((64, 64), 2, 2, (2.0, 1.0, 0.5), 8.0,
                                      detectron_rounding=True)[2].numpy()
  # Detectron's ratios are height / width: our (2, 1, 0.5) is its (0.5, 1, 2).
  cells = anchor_lib.detectron_cell_anchors(4, [32], [0.5, 1.0, 2.0])[:, [1, 0, 3, 2]]
  np.testing.assert_array_equal(got[:3], cells)
  np.testing.assert_array_equal(got[3:6], cells + [0, 4, 0, 4])  # the next column
  np.testing.assert_array_equal(got[16 * 3:16 * 3 + 3], cells + [4, 0, 4, 0])  # the next row
