r"""COCO instance annotations + images -> sharded TFRecords (Model Garden's tf.Example format).

  python -m rethink_tf.data.coco_tfrecord --annotations=instances_train2017.json \
      --image_dir=train2017 --output=/data/coco/train --num_shards=32 \
      [--subset_size=10000 --subset_seed=0] [--strict]

Each record holds the encoded image (RGB/grayscale JPEG and PNG bytes kept as they are, other
modes such as CMYK re-encoded as RGB JPEG), `image/source_id` (the COCO image id as a decimal
string, so 64-bit ids survive), normalized boxes, the COCO category id as label, `is_crowd`,
the JSON `area`, one PNG mask per instance at image resolution (polygons, compressed and
uncompressed RLE all decoded with pycocotools) and, when the categories name keypoints,
`image/object/keypoints`: K (x, y, v) per instance in pixels (K = the most any category
has). Images without annotations are kept.
Every image and annotation is checked first (`coco_validation`): each problem is repaired by a
stated rule or its record skipped, the end-of-run report counts each kind with example records
(also written to `{output}-report.json`), and `--strict` makes any problem an error.
`--subset_size` draws a deterministic random subset of images (the paper's 1k/3.5k/10k/35k
runs); the same seed gives the same subset.
"""

import collections
import io
import json
import os
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image

from rethink_tf import console
from rethink_tf.data import coco_validation as validation


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _png(mask: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(mask).save(buf, format="PNG")
  return buf.getvalue()


def image_example(image: dict, anns: Sequence[dict], image_dir: str, categories: Mapping[int, int],
                  report: validation.Report, counts: Dict[str, int]) -> Optional[tf.train.Example]:
  """The tf.train.Example of one image, or None when the image is skipped (its problem is in
  `report`). Annotations are checked and repaired by `coco_validation`; `categories` maps
  each category id to its number of keypoints; `counts` is updated with what was written."""
  read = validation.read_image(image, image_dir, report)
  if read is None:
    return None
  encoded, fmt = read
  h, w = image["height"], image["width"]
  instances = [
      i for i in (validation.check_annotation(a, h, w, categories, report) for a in anns)
      if i is not None
  ]
  boxes = [(y0 / h, x0 / w, y1 / h, x1 / w) for y0, x0, y1, x1 in (i.box_yxyx for i in instances)]
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
      "image/object/class/label": _ints([i.category_id for i in instances]),
      "image/object/is_crowd": _ints([int(i.is_crowd) for i in instances]),
      "image/object/area": _floats([i.area for i in instances]),
      "image/object/mask": _bytes([_png(i.mask) for i in instances]),
  }
  if max(categories.values(), default=0):  # K (x, y, v) per instance, in pixels
    feature["image/object/keypoints"] = _floats(
        [float(v) for i in instances for v in i.keypoints.reshape(-1)])
  counts["images"] += 1
  counts["crowd"] += sum(i.is_crowd for i in instances)
  counts["instances"] += sum(not i.is_crowd for i in instances)
  return tf.train.Example(features=tf.train.Features(feature=feature))


def select_subset(image_ids: Sequence[int], subset_size: Optional[int], seed: int) -> List[int]:
  """A deterministic random subset of `subset_size` ids (all ids when None), sorted."""
  ids = sorted(image_ids)
  if not subset_size or subset_size >= len(ids):
    return ids
  rng = np.random.default_rng(seed)
  return sorted(int(ids[i]) for i in rng.choice(len(ids), subset_size, replace=False))


PROGRESS_EVERY = 1000  # images between progress lines (verbose)


class ConversionError(ValueError):
  """`--strict` found problems; nothing was written."""


def convert(annotations: str,
            image_dir: str,
            output: str,
            num_shards: int = 1,
            subset_size: Optional[int] = None,
            subset_seed: int = 0,
            strict: bool = False,
            verbose: bool = False) -> Dict:
  """Writes `{output}-0000i-of-0000N.tfrecord` shards and `{output}-report.json`.

  Every image and annotation is checked (`coco_validation.PROBLEMS`): problems are repaired
  or their records skipped and counted in the report; with `strict`, any problem raises a
  ConversionError naming every record and no shard is written. Shards are written under a
  temporary name and renamed when all are complete, so a failed run never leaves a partial
  file under the final name. `verbose` prints progress and the report's summary.

  Returns:
    {"images", "instances", "crowd", "shards": written counts, "problems": {kind: count}}.
  """
  data = validation.load_annotations(annotations)
  report = validation.Report()
  images, by_image, categories = validation.index_dataset(data, report)
  ids = select_subset(list(images), subset_size, subset_seed)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  names = [f"{output}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(n + ".tmp") for n in names]
  counts = collections.Counter()
  try:
    t0 = time.time()
    for k, image_id in enumerate(ids):
      if verbose and k and (k % PROGRESS_EVERY == 0):
        rate = k / max(time.time() - t0, 1e-9)
        logging.info(f"{k}/{len(ids)} images, {rate:.1f} images/s, ETA "
                     f"{(len(ids) - k) / rate / 60:.1f} min, {len(report)} problem(s) so far")
      ex = image_example(images[image_id], by_image.get(image_id, []), image_dir, categories,
                         report, counts)
      if ex is not None:
        writers[(counts["images"] - 1) % num_shards].write(ex.SerializeToString())
    for w in writers:
      w.close()
    if strict and len(report):
      raise ConversionError(f"{annotations}: {len(report)} problem(s) with --strict; nothing "
                            f"was written:\n{report.every_record()}")
    for n in names:
      os.replace(n + ".tmp", n)
  except BaseException:
    for w, n in zip(writers, names):
      w.close()
      if os.path.exists(n + ".tmp"):
        os.remove(n + ".tmp")
    raise
  result = dict(images=counts["images"],
                instances=counts["instances"],
                crowd=counts["crowd"],
                shards=num_shards,
                problems=report.counts)
  report_path = f"{output}-report.json"
  with open(report_path + ".tmp", "w") as f:
    json.dump(
        {
            "annotations": annotations, "image_dir": image_dir,
            **result, "problem_records": report.as_dict()
        },
        f,
        indent=1)
  os.replace(report_path + ".tmp", report_path)
  if verbose:
    logging.info(report.summary())
  return result


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("annotations", None, "COCO instances JSON.")
  flags.DEFINE_string("image_dir", None, "Directory of the images named in the JSON.")
  flags.DEFINE_string("output", None, "Output prefix; shards are PREFIX-0000i-of-0000N.tfrecord.")
  flags.DEFINE_integer("num_shards", 1, "Number of output shards.")
  flags.DEFINE_integer("subset_size", None, "Keep a deterministic random subset of K images.")
  flags.DEFINE_integer("subset_seed", 0, "Seed of the subset draw.")
  flags.DEFINE_bool(
      "strict", False, "Fail (exit 1, nothing written) on any problem in the "
      "data instead of repairing or skipping the record.")
  flags.mark_flags_as_required(["annotations", "image_dir", "output"])


def main(argv):
  console.show_library_logs()
  del argv
  try:
    counts = convert(FLAGS.annotations,
                     FLAGS.image_dir,
                     FLAGS.output,
                     FLAGS.num_shards,
                     FLAGS.subset_size,
                     FLAGS.subset_seed,
                     FLAGS.strict,
                     verbose=True)
  except ValueError as e:  # a bad file, or --strict: the message names every record
    sys.exit(f"error: {e}")
  print(f"wrote {counts['images']} images, {counts['instances']} instances and "
        f"{counts['crowd']} crowd regions to {counts['shards']} shard(s) at {FLAGS.output}; "
        f"report: {FLAGS.output}-report.json")
  print(json.dumps(counts))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-coco-tfrecord`)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console_main()
