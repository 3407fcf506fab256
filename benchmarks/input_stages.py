r"""Per-example cost of each stage of our training input pipeline, one core, at the benchmark's
settings (R50-FPN anchors, 512 px synthetic JPEGs, 100 padded instances).

  python -m benchmarks.input_stages [--size=512] [--examples=64]

Each stage runs as a `tf.data` map with one parallel call over the same cached records, so the
differences between lines are what each stage adds. `benchmarks.run --suite=input` measures the
whole pipeline against Model Garden's; this says where our time goes.
"""

import time

import tensorflow as tf
from absl import app, flags

from benchmarks import contenders

FLAGS = flags.FLAGS


def per_example_ms(records: tf.data.Dataset, fn) -> float:
  it = iter(records.enumerate().map(fn, num_parallel_calls=1))
  next(it)  # traces the map function
  start, n = time.perf_counter(), 0
  for _ in it:
    n += 1
  return (time.perf_counter() - start) / max(n, 1) * 1000


def main(argv):
  del argv
  from rethink_tf.data import input_pipeline as ip
  trainer = contenders.our_trainer(FLAGS.size, 2, "BN")
  cfg = trainer.task.input_cfg
  parser = ip.Parser(cfg, trainer.model.anchor_kwargs)
  decoder = ip._decoder(include_mask=True)  # the pipeline's own decoder
  files = sorted(tf.io.gfile.glob(cfg.train_pattern))
  records = tf.data.TFRecordDataset(files).take(FLAGS.examples).cache()
  for _ in records:  # read once: the stages below do not time the disk
    pass

  def resized(i, s):
    image = parser._resize(decoder.decode(s)["image"], None, True)[0]
    return parser._normalize_and_pad(image)

  def mask_crops(i, s):
    d = decoder.decode(s)
    return ip.box_relative_masks(d["groundtruth_instance_masks"], d["groundtruth_boxes"],
                                 cfg.mask_crop_size)

  stages = {
      "decode (tf.Example + JPEG)":
          lambda i, s: decoder.decode(s)["image"],
      "decode + resize + normalize + pad":
          resized,
      "decode + box-relative mask crops":
          mask_crops,
      "whole parse_train (+ RPN anchor labels and targets)":
          lambda i, s: parser.parse_train(i, decoder.decode(s), 1),
  }
  print(f"{FLAGS.size} px, {parser.anchors.shape[0]} anchors, {cfg.max_instances} padded "
        f"instances, {cfg.mask_crop_size} px mask crops; ms per example on one core:")
  for name, fn in stages.items():
    print(f"  {per_example_ms(records, fn):7.1f}  {name}", flush=True)


if __name__ == "__main__":
  flags.DEFINE_integer("size", 512, "Padded square input size.")
  flags.DEFINE_integer("examples", 64, "Training records timed per stage.")
  app.run(main)
