"""Serves one image file through `image_bytes` in a TensorFlow-only process under the serving
client's memory limit, and saves what it measured and received.

  python memory_client.py EXPORT_DIR IMAGE OUT.npz

OUT.npz holds peak_rss_mb (the process's peak resident memory after two requests),
response_bytes (every output of one response: array bytes, string lengths), first_s and
steady_s (the two requests' latencies), and the valid detections' boxes, box-relative masks,
RLE strings and the image size.
"""

import sys
import time

# isort: off
# serving_client first: importing it installs the block on the project's packages.
from serving_client import limit_memory, peak_rss_mb
import numpy as np
import tensorflow as tf
# isort: on


def response_bytes(arrays) -> int:
  return int(
      sum(
          sum(len(s)
              for s in a.ravel()) if a.dtype == object else a.nbytes
          for a in arrays.values()))


def main(export_dir, image_path, out_path):
  limit_memory()
  serve = tf.saved_model.load(export_dir).signatures["image_bytes"]
  with open(image_path, "rb") as f:
    request = tf.constant([f.read()])
  start = time.perf_counter()
  serve(image_bytes=request)
  first = time.perf_counter() - start
  start = time.perf_counter()
  out = {k: v.numpy() for k, v in serve(image_bytes=request).items()}
  steady = time.perf_counter() - start
  n = int(out["num_detections"][0])
  np.savez(out_path,
           peak_rss_mb=peak_rss_mb(),
           response_bytes=response_bytes(out),
           first_s=first,
           steady_s=steady,
           image_size=out["image_size"][0],
           boxes=out["detection_boxes"][0, :n],
           box_relative=out["detection_masks_box_relative"][0, :n],
           masks_rle=out["detection_masks_rle"][0, :n].astype(bytes))


if __name__ == "__main__":
  main(*sys.argv[1:4])
