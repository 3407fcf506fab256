"""Pictures of predictions for TensorBoard: a fixed set of validation images with their
detections drawn (masks tinted, boxes outlined, one colour per class)."""

import numpy as np

from rethink_tf.data.input_pipeline import InputConfig, make_dataset
from rethink_tf.evaluation import evaluator
from rethink_tf.layers.paste_masks import paste_masks

# One colour per contiguous class (cycled), RGB 0-255.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.float32)


def _display(image, cfg: InputConfig):
  """Undo normalization (and BGR order) of a padded model input -> uint8-range RGB float."""
  rgb = image * np.asarray(cfg.pixel_std, np.float32) + np.asarray(cfg.pixel_mean, np.float32)
  if cfg.channel_order == "BGR":
    rgb = rgb[..., ::-1]
  return np.clip(rgb, 0, 255)


def draw_detections(image, boxes, classes, masks=None, alpha: float = 0.45, thickness: int = 1):
  """image [H, W, 3] float 0-255; boxes [N, 4] yxyx pixels; classes [N] int; masks [N, H, W]
  {0, 1} or None -> uint8 [H, W, 3]."""
  out = image.astype(np.float32).copy()
  h, w = out.shape[:2]
  for i in range(len(boxes)):
    colour = PALETTE[int(classes[i]) % len(PALETTE)]
    if masks is not None:
      m = masks[i].astype(bool)
      out[m] = (1 - alpha) * out[m] + alpha * colour
    y0, x0, y1, x1 = (int(round(v)) for v in boxes[i])
    y0, y1 = np.clip([y0, y1 - 1], 0, h - 1)
    x0, x1 = np.clip([x0, x1 - 1], 0, w - 1)
    t = thickness
    out[y0:y0 + t, x0:x1 + 1] = colour
    out[max(y1 - t + 1, 0):y1 + 1, x0:x1 + 1] = colour
    out[y0:y1 + 1, x0:x0 + t] = colour
    out[y0:y1 + 1, max(x1 - t + 1, 0):x1 + 1] = colour
  return out.astype(np.uint8)


def prediction_images(model,
                      cfg: InputConfig,
                      num_images: int = 4,
                      min_score: float = 0.5) -> np.ndarray:
  """The first `num_images` validation images (the split in file order: the same images at
  every evaluation) with the detections scoring >= min_score.

  Returns uint8 [N, padded_h, padded_w, 3] in the model's resized frame (padding black).
  """
  batch = next(iter(make_dataset(cfg, False, num_images, model.anchor_kwargs,
                                 group_canvases=False)))
  detect = evaluator.detect_function(model, any_canvas=cfg.eval_canvas == "fit")
  det = {k: v.numpy() for k, v in detect(batch["images"], batch["image_size"]).items()}
  images = batch["images"].numpy()
  sizes = batch["image_size"].numpy().astype(int)
  out = []
  for i in range(images.shape[0]):
    n = int(det["num_detections"][i])
    keep = np.flatnonzero(det["scores"][i, :n] >= min_score)
    boxes, classes = det["boxes"][i, keep], det["classes"][i, keep]
    masks = None
    if "masks" in det and len(keep):
      ph, pw = images.shape[1:3]
      probs = paste_masks(det["masks"][i, keep], boxes, int(sizes[i, 0]), int(sizes[i, 1]), ph,
                          pw).numpy()
      masks = probs >= 0.5
    picture = _display(images[i], cfg)
    picture[int(sizes[i, 0]):] = 0
    picture[:, int(sizes[i, 1]):] = 0
    out.append(draw_detections(picture, boxes, classes, masks))
  return np.stack(out)
