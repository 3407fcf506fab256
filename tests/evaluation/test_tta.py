"""Test-time augmentation's geometry: flipping an image within its valid width moves every
object to its flipped box, the padding stays put, and each extra scale pads to a static square
that holds it."""

import numpy as np
import tensorflow as tf

from rethink_tf.data.input_pipeline import InputConfig
from rethink_tf.evaluation.tta import TestTimeAugmentation, flip_boxes, flip_images


def test_flipped_image_shows_each_object_in_its_flipped_box():
  images = np.zeros([2, 32, 48, 1], np.float32)
  boxes = np.array([[[4, 3, 10, 9]], [[20, 30, 28, 39]]], np.float32)  # yxyx, [B, 1, 4]
  widths = np.array([40.0, 44.0], np.float32)  # valid widths
  for i, (y1, x1, y2, x2) in enumerate(boxes[:, 0].astype(int)):
    images[i, y1:y2, x1:x2] = 1.0
    images[i, :, int(widths[i]):] = 7.0  # padding
  image_size = tf.constant([[32.0, widths[0]], [32.0, widths[1]]])
  flipped = flip_images(tf.constant(images), image_size).numpy()
  fboxes = flip_boxes(tf.constant(boxes), image_size[:, 1]).numpy()
  for i in range(2):
    y1, x1, y2, x2 = fboxes[i, 0].astype(int)
    want = np.zeros([32, 48], np.float32)
    want[y1:y2, x1:x2] = 1.0
    want[:, int(widths[i]):] = 7.0
    np.testing.assert_array_equal(flipped[i, ..., 0], want)
  # Flipping twice is the identity, for images and boxes.
  np.testing.assert_array_equal(flip_images(tf.constant(flipped), image_size).numpy(), images)
  np.testing.assert_allclose(flip_boxes(tf.constant(fboxes), image_size[:, 1]).numpy(), boxes)


def test_each_scale_pads_to_a_square_that_holds_it():
  cfg = InputConfig(short_side=800, max_long_side=1333, padded_size=(1344, 1344))
  tta = TestTimeAugmentation(scales=(400, 800, 1200), max_long_side=1800)
  configs = tta.input_configs(cfg, 64)
  assert configs[0] is cfg and len(configs) == 3  # 800 is the base scale
  assert [(c.short_side, c.max_long_side, c.padded_size) for c in configs[1:]
         ] == [(400, 666, (704, 704)), (1200, 1800, (1856, 1856))]
  assert tta.augmentations(3) == [(0, False), (0, True), (1, False), (1, True), (2, False),
                                  (2, True)]
  assert TestTimeAugmentation(flip=False).augmentations(1) == [(0, False)]
