r"""COCO instance annotations + images -> sharded TFRecords (Model Garden's tf.Example format).

  python -m rethink_tf.data.coco_tfrecord --annotations=instances_train2017.json \
      --image_dir=train2017 --output=/data/coco/train --num_shards=32 \
      [--subset_size=10000 --subset_seed=0]

Each record holds the encoded image (RGB/grayscale JPEG and PNG bytes kept as they are, other
modes such as CMYK re-encoded as RGB JPEG), `image/source_id` (the COCO image id as a decimal
string, so 64-bit ids survive), normalized boxes, the COCO category id as label, `is_crowd`,
the JSON `area`, and one PNG mask per instance at image resolution (polygons, compressed and
uncompressed RLE all decoded with pycocotools). Images without annotations are kept.
`--subset_size` draws a deterministic random subset of images (the paper's 1k/3.5k/10k/35k
runs); the same seed gives the same subset.
"""

import collections
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image
from pycocotools import mask as mask_utils


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
  """Decodes a COCO segmentation (polygons, RLE with list or string counts) -> uint8 [H, W]."""
  if isinstance(segmentation, list):
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
    rle = mask_utils.frPyObjects(segmentation, height, width)
  elif isinstance(segmentation, dict):
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
      rle["counts"] = rle["counts"].encode("ascii")
  else:
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
  return mask_utils.decode(rle).astype(np.uint8)


def _encoded_rgb_image(path: str):
  """Returns (bytes, format, height, width); re-encodes modes TF cannot decode as RGB."""
  with open(path, "rb") as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as im:
    fmt, mode, (w, h) = im.format, im.mode, im.size
    if (fmt == "JPEG" and mode in ("RGB", "L")) or (fmt == "PNG" and mode in ("RGB", "L", "RGBA")):
      return data, fmt.lower(), h, w
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue(), "jpeg", h, w


def _png(mask: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(mask).save(buf, format="PNG")
  return buf.getvalue()


def image_example(image: dict, anns: Sequence[dict], image_dir: str, counts: Dict[str, int]):
  """Builds the tf.train.Example of one image; updates `counts`."""
  path = os.path.join(image_dir, image["file_name"])
  encoded, fmt, h, w = _encoded_rgb_image(path)
  if (h, w) != (image["height"], image["width"]):
    raise ValueError(f"{path}: image is {h}x{w} but the annotations say "
                     f"{image['height']}x{image['width']} (image id {image['id']})")
  boxes, labels, crowd, areas, masks = [], [], [], [], []
  for a in anns:
    x, y, bw, bh = a["bbox"]
    if bw <= 0 or bh <= 0:
      counts["skipped_empty_box"] += 1
      continue
    boxes.append((max(y / h, 0.0), max(x / w, 0.0), min((y + bh) / h, 1.0),
                  min((x + bw) / w, 1.0)))
    labels.append(int(a["category_id"]))
    crowd.append(int(a.get("iscrowd", 0)))
    areas.append(float(a.get("area", bw * bh)))
    masks.append(_png(annotation_mask(a["segmentation"], h, w)))
    counts["crowd" if crowd[-1] else "instances"] += 1
  ymin, xmin, ymax, xmax = (list(v) for v in zip(*boxes)) if boxes else ([], [], [], [])
  feature = {
      "image/encoded": _bytes([encoded]),
      "image/format": _bytes([fmt.encode()]),
      "image/source_id": _bytes([str(image["id"]).encode()]),
      "image/filename": _bytes([image["file_name"].encode()]),
      "image/height": _ints([h]),
      "image/width": _ints([w]),
      "image/object/bbox/ymin": _floats(ymin),
      "image/object/bbox/xmin": _floats(xmin),
      "image/object/bbox/ymax": _floats(ymax),
      "image/object/bbox/xmax": _floats(xmax),
      "image/object/class/label": _ints(labels),
      "image/object/is_crowd": _ints(crowd),
      "image/object/area": _floats(areas),
      "image/object/mask": _bytes(masks),
  }
  counts["images"] += 1
  return tf.train.Example(features=tf.train.Features(feature=feature))


def select_subset(image_ids: Sequence[int], subset_size: Optional[int], seed: int) -> List[int]:
  """A deterministic random subset of `subset_size` ids (all ids when None), sorted."""
  ids = sorted(image_ids)
  if not subset_size or subset_size >= len(ids):
    return ids
  rng = np.random.default_rng(seed)
  return sorted(int(ids[i]) for i in rng.choice(len(ids), subset_size, replace=False))


def convert(annotations: str, image_dir: str, output: str, num_shards: int = 1,
            subset_size: Optional[int] = None, subset_seed: int = 0) -> Dict[str, int]:
  """Writes `{output}-0000i-of-0000N.tfrecord` shards; returns counts of what was written.

  Shards are written under a temporary name and renamed when complete, so a failed run never
  leaves a partial file behind under the final name.
  """
  with open(annotations) as f:
    data = json.load(f)
  images = {int(im["id"]): im for im in data["images"]}
  by_image = collections.defaultdict(list)
  for a in data.get("annotations", []):
    by_image[int(a["image_id"])].append(a)
  ids = select_subset(list(images), subset_size, subset_seed)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  names = [f"{output}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(n + ".tmp") for n in names]
  counts = collections.Counter()
  try:
    for k, image_id in enumerate(ids):
      ex = image_example(images[image_id], by_image.get(image_id, []), image_dir, counts)
      writers[k % num_shards].write(ex.SerializeToString())
  except BaseException:
    for w, n in zip(writers, names):
      w.close()
      os.remove(n + ".tmp")
    raise
  for w, n in zip(writers, names):
    w.close()
    os.replace(n + ".tmp", n)
  counts = dict(images=counts["images"], instances=counts["instances"], crowd=counts["crowd"],
                skipped_empty_box=counts["skipped_empty_box"], shards=num_shards)
  return counts


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("annotations", None, "COCO instances JSON.")
  flags.DEFINE_string("image_dir", None, "Directory of the images named in the JSON.")
  flags.DEFINE_string("output", None, "Output prefix; shards are PREFIX-0000i-of-0000N.tfrecord.")
  flags.DEFINE_integer("num_shards", 1, "Number of output shards.")
  flags.DEFINE_integer("subset_size", None, "Keep a deterministic random subset of K images.")
  flags.DEFINE_integer("subset_seed", 0, "Seed of the subset draw.")
  flags.mark_flags_as_required(["annotations", "image_dir", "output"])


def main(argv):
  del argv
  counts = convert(FLAGS.annotations, FLAGS.image_dir, FLAGS.output, FLAGS.num_shards,
                   FLAGS.subset_size, FLAGS.subset_seed)
  print(f"wrote {counts['images']} images, {counts['instances']} instances and "
        f"{counts['crowd']} crowd regions to {counts['shards']} shard(s) at {FLAGS.output}"
        + (f" (skipped {counts['skipped_empty_box']} annotations with an empty box)"
           if counts["skipped_empty_box"] else ""))
  print(json.dumps(counts))


if __name__ == "__main__":
  define_flags()
  app.run(main)
