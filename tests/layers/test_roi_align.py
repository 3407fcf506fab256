"""RoIAlign against torchvision.ops.roi_align / MultiScaleRoIAlign
(tests/testdata/roi_align_ref.npz)."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.layers.roi_align import assign_levels, multilevel_roi_align, roi_align


def _torch_rois_to_batched(rois):
  """[K, 5] (batch, x1, y1, x2, y2) -> list of (batch index, [1, 1, 4] yxyx)."""
  return [(int(r[0]), np.array([[[r[2], r[1], r[4], r[3]]]], np.float32)) for r in rois]


def _run_single(fmap, rois, size, scale, aligned):
  feats = fmap.transpose(0, 2, 3, 1)
  out = []
  for b, box in _torch_rois_to_batched(rois):
    out.append(roi_align(feats[b:b + 1], box, size, scale, 2, aligned).numpy()[0, 0])
  return np.stack(out).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("stride,aligned", [(4, True), (8, True), (4, False), (8, False)])
def test_single_level_matches_torchvision(roi_ref, stride, aligned):
  key = f"roi_align_s{stride}_{'aligned' if aligned else 'unaligned'}"
  got = _run_single(roi_ref["feature_map"], roi_ref[f"rois_s{stride}"], 7, 1.0 / stride, aligned)
  np.testing.assert_allclose(got, roi_ref[key], atol=1e-4, rtol=0)


def test_mask_size_14_matches_torchvision(roi_ref):
  got = _run_single(roi_ref["feature_map"], roi_ref["rois_s4"], 14, 0.25, True)
  np.testing.assert_allclose(got, roi_ref["roi_align_s4_aligned_14"], atol=1e-4, rtol=0)


def test_batched_boxes_equal_one_by_one(roi_ref):
  """All RoIs of both images in one call (padded batch) give the same values."""
  feats = roi_ref["feature_map"].transpose(0, 2, 3, 1)
  rois = roi_ref["rois_s4"]
  boxes = np.zeros((2, 8, 4), np.float32)
  for b in range(2):
    sel = rois[rois[:, 0] == b]
    boxes[b] = sel[:, [2, 1, 4, 3]]
  got = roi_align(feats, boxes, 7, 0.25, 2, True).numpy()
  ref = roi_ref["roi_align_s4_aligned"]
  for b in range(2):
    np.testing.assert_allclose(got[b].transpose(0, 3, 1, 2), ref[rois[:, 0] == b], atol=1e-4)


def test_multilevel_matches_multiscale_roi_align(roi_ref):
  """Detectron level assignment (canonical 224 at level 4) and per-level pooling."""
  feats = {l: roi_ref[f"msroi_p{l}"].transpose(0, 2, 3, 1) for l in (2, 3, 4, 5)}
  rois = roi_ref["msroi_rois"]
  yxyx = rois[:, [2, 1, 4, 3]].astype(np.float32)
  np.testing.assert_array_equal(assign_levels(yxyx, 2, 5).numpy(), roi_ref["msroi_levels"])
  outs = []
  for b in range(2):
    sel = yxyx[rois[:, 0] == b][None]
    per_image = {l: v[b:b + 1] for l, v in feats.items()}
    # torchvision's MultiScaleRoIAlign uses aligned=False.
    outs.append(multilevel_roi_align(per_image, sel, 7, 2, aligned=False).numpy()[0])
  got = np.concatenate(outs).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(got, roi_ref["msroi_output"], atol=1e-4, rtol=0)


def test_xla_compiles_and_agrees(roi_ref):
  feats = tf.constant(roi_ref["feature_map"].transpose(0, 2, 3, 1))
  boxes = tf.constant(roi_ref["rois_s4"][:, [2, 1, 4, 3]].reshape(2, 8, 4))
  eager = roi_align(feats, boxes, 7, 0.25)
  xla = tf.function(lambda f, b: roi_align(f, b, 7, 0.25), jit_compile=True)(feats, boxes)
  np.testing.assert_allclose(xla.numpy(), eager.numpy(), atol=1e-5)


def test_chunked_multilevel_equals_all_at_once(roi_ref):
  """The memory-bounded path (boxes pooled chunk by chunk in a loop, as inference does) gives
  the same values as pooling every box at once, eager and under XLA."""
  from rethink_tf.layers.roi_align import roi_chunk
  feats = {
      l: tf.constant(np.tile(roi_ref[f"msroi_p{l}"][:1].transpose(0, 2, 3, 1), [2, 1, 1, 1]))
      for l in (2, 3, 4, 5)
  }
  rois = roi_ref["msroi_rois"][:, [2, 1, 4, 3]].astype(np.float32)
  boxes = tf.constant(np.stack([rois[:6], rois[::-1][:6]]))  # [2, 6, 4]
  c = feats[2].shape[-1]
  per_box = 2 * 14 * 14 * c * 4
  assert roi_chunk(2, 6, 14, c, 2 * per_box) == 2
  assert roi_chunk(2, 6, 14, c, per_box // 2) == 1
  full = multilevel_roi_align(feats, boxes, 7, 2)
  chunked = multilevel_roi_align(feats, boxes, 7, 2, max_chunk_bytes=3 * per_box)
  np.testing.assert_allclose(chunked.numpy(), full.numpy(), atol=1e-6)
  xla = tf.function(lambda f, b: multilevel_roi_align(f, b, 7, 2, max_chunk_bytes=per_box),
                    jit_compile=True)(feats, boxes)
  np.testing.assert_allclose(xla.numpy(), full.numpy(), atol=1e-4)  # XLA fuses multiply-adds
  # A batch and canvas known only at run time (evaluation on any canvas, a served model) is
  # chunked too, with the budget per image.
  any_shape = {l: tf.TensorSpec([None, None, None, c]) for l in feats}
  pool = tf.function(lambda f, b: multilevel_roi_align(f, b, 7, 2, max_chunk_bytes=per_box),
                     input_signature=[any_shape, tf.TensorSpec([None, 6, 4])])
  graph = pool.get_concrete_function().graph
  assert any("While" in op.type for op in graph.get_operations())  # the chunk loop
  # (the shape-agnostic graph orders its float sums differently: within 1e-5)
  np.testing.assert_allclose(pool(feats, boxes).numpy(), full.numpy(), atol=2e-5)
