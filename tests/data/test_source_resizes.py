"""The source frameworks' resizes in the graph: detectron2's (Pillow's `Image.resize(...,
BILINEAR)` bit for bit and `ResizeShortestEdge`'s sizes) and Detectron's (OpenCV's float
resize by one factor)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rethink_tf.data import opencv_resize
from rethink_tf.data.image_preprocessing import resize_for_model
from rethink_tf.data.pil_resize import detectron2_output_size, pil_bilinear_resize

# One trace for every size (a tf.function per call would retrace the while loops each time).
_resize = tf.function(pil_bilinear_resize,
                      input_signature=[
                          tf.TensorSpec([None, None, 3], tf.uint8),
                          tf.TensorSpec([], tf.int32),
                          tf.TensorSpec([], tf.int32)
                      ])


def _pillow(image, out_h, out_w):
  return np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))


def _detectron2_size(h, w, short, max_size):
  """detectron2's `ResizeShortestEdge.get_output_shape`, in Python floats."""
  size = short * 1.0
  scale = size / min(h, w)
  newh, neww = (size, scale * w) if h < w else (scale * h, size)
  if max(newh, neww) > max_size:
    scale = max_size * 1.0 / max(newh, neww)
    newh, neww = newh * scale, neww * scale
  return int(newh + 0.5), int(neww + 0.5)


@pytest.mark.parametrize(
    "shape, out",
    [
        ((128, 128), (512, 512)),  # the upscale
        ((480, 640), (800, 1067)),  # COCO's typical photo at the paper's 800/1333
        ((480, 640), (96, 128)),  # shrinking: Pillow widens the filter (antialiasing)
        ((294, 640), (196, 427)),
        ((500, 375), (341, 256)),
        ((3024, 4032), (1000, 1333)),  # a phone photo
        ((1000, 33), (77, 5)),  # Pillow 13 resamples the rows first here
        ((33, 1000), (5, 77)),
        ((1, 5), (3, 1)),
        ((7, 3), (20, 9)),
        ((64, 64), (64, 100)),  # one axis unchanged
    ])
def test_equals_pillow_on_upscales_downscales_and_odd_shapes(shape, out):
  image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
  np.testing.assert_array_equal(_resize(image, *out).numpy(), _pillow(image, *out))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(h=st.integers(1, 300),
       w=st.integers(1, 300),
       out_h=st.integers(1, 400),
       out_w=st.integers(1, 400),
       seed=st.integers(0, 2**31))
def test_equals_pillow_on_random_sizes(h, w, out_h, out_w, seed):
  image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  np.testing.assert_array_equal(_resize(image, out_h, out_w).numpy(), _pillow(image, out_h, out_w))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(h=st.integers(1, 5000),
       w=st.integers(1, 5000),
       short=st.integers(64, 1024),
       extra=st.integers(0, 1000))
def test_output_size_is_detectron2s(h, w, short, extra):
  max_size = short + extra
  assert tuple(detectron2_output_size(h, w, short,
                                      max_size).numpy()) == _detectron2_size(h, w, short, max_size)


def test_pil_method_returns_per_axis_scales():
  image = tf.zeros([294, 640, 3], tf.uint8)
  resized, scale, size = resize_for_model(image, 256, 427, (448, 448), method="pil")
  assert resized.shape == (196, 427, 3) and tuple(size.numpy()) == (196, 427)
  np.testing.assert_allclose(scale.numpy(), [196 / 294, 427 / 640], rtol=1e-7)


@pytest.mark.parametrize("shape, short, max_size",
                         [((480, 640), 800, 1333), ((427, 640), 800, 1333), ((500, 375), 800, 1333),
                          ((294, 640), 256, 427), ((3024, 4032), 800, 1333),
                          ((33, 1000), 800, 1333)])
def test_opencv_resize_is_detectrons(shape, short, max_size):
  """Detectron's `prep_im_for_blob`: the scale rule and OpenCV's resize of the float image by
  that factor. OpenCV's float kernels (Intel IPP in its wheels) round differently in the last
  bits; the resize by the sizes' ratio (`tf.image.resize`) is off by tens of levels."""
  import cv2
  h, w = shape
  image = np.random.default_rng(h + w).uniform(-120, 130, (h, w, 3)).astype(np.float32)
  factor = short / min(h, w)
  if np.round(factor * max(h, w)) > max_size:
    factor = max_size / max(h, w)
  theirs = cv2.resize(image, None, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
  scale, size = opencv_resize.detectron_scale(h, w, short, max_size)
  assert float(scale) == factor and tuple(size.numpy()) == theirs.shape[:2]
  ours = opencv_resize.opencv_linear_resize(image, scale, size[0], size[1]).numpy()
  assert np.abs(ours - theirs).max() <= 0.05
  resized, scales, _ = resize_for_model(image, short, max_size, (4096, 4096), method="opencv")
  np.testing.assert_array_equal(resized.numpy(), ours)
  np.testing.assert_allclose(scales.numpy(), [factor, factor], rtol=1e-7)
