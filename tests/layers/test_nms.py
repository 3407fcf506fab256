"""NMS keeps exactly torchvision's indices (tests/testdata/roi_align_ref.npz)."""

import numpy as np
import pytest

from rethink_tf.layers.box_ops import pairwise_iou
from rethink_tf.layers.nms import batched_nms_padded, nms_padded


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_nms_keeps_torchvision_indices(roi_ref, thr):
  yxyx = roi_ref["nms_boxes"][:, [1, 0, 3, 2]][None]
  idx, valid = nms_padded(yxyx, roi_ref["nms_scores"][None], 64, thr)
  kept = idx.numpy()[0][valid.numpy()[0]]
  np.testing.assert_array_equal(kept, roi_ref[f"nms_keep_iou0{int(thr * 100)}"])


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_batched_nms_keeps_torchvision_indices(roi_ref, thr):
  yxyx = roi_ref["nms_boxes"][:, [1, 0, 3, 2]][None]
  idx, valid = batched_nms_padded(yxyx, roi_ref["nms_scores"][None], roi_ref["nms_classes"][None],
                                  64, thr)
  kept = idx.numpy()[0][valid.numpy()[0]]
  np.testing.assert_array_equal(kept, roi_ref[f"batched_nms_keep_iou0{int(thr * 100)}"])


def test_iou_matches_torchvision(roi_ref):
  yxyx = roi_ref["nms_boxes"][:, [1, 0, 3, 2]][None]
  np.testing.assert_allclose(pairwise_iou(yxyx, yxyx).numpy()[0],
                             roi_ref["nms_iou_matrix"],
                             atol=1e-6)
