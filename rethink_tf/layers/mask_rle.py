"""Instance masks as COCO run-length encodings, computed in the graph from each detection's box.

A full-resolution mask per padded detection costs `D x H x W` bytes whatever was detected
(100 x 12 MP = 1.2 GB for one phone photo). Here each valid detection's mask is pasted only in
its box's window (`paste_masks.paste_window`), its runs are taken in COCO's column-major order
straight from that window, and they are written in pycocotools' compressed string form (the
`counts` of `mask.encode`, ASCII 48..111): memory and output scale with the boxes, and a REST
client receives plain JSON strings that any COCO tool decodes (`{"size": [H, W], "counts": s}`).

Evaluation and the exported SavedModel both encode with `encode_masks`, so a served mask is
byte-for-byte the evaluated one.
"""

import tensorflow as tf

from rethink_tf.layers.paste_masks import paste_window

# A count's difference is written 5 bits per character; 8 characters hold 40 bits, far beyond
# any image's pixel count (and the image's pixel budget is checked before decoding).
_CHUNKS = 8


def window_run_lengths(window, y0, x0, height, width):
  """COCO run lengths of an image that is 0 everywhere but in one window.

  Args:
    window: [h, w] bool, the mask's pixels in rows y0 .. y0+h-1 and columns x0 .. x0+w-1.
    y0, x0, height, width: int32 scalars (the window lies inside the height x width image).
  Returns:
    int64 [R]: lengths of alternating runs of 0 and 1 over the image in column-major order,
    starting with 0s (a mask whose first pixel is 1 starts with a 0-length run), as
    pycocotools' `rleEncode`.
  """
  h64 = tf.cast(height, tf.int64)
  total = h64 * tf.cast(width, tf.int64)
  cols = tf.pad(tf.cast(tf.transpose(window), tf.int8), [[0, 0], [1, 1]])  # [w, h + 2]
  # A value changes between row i - 1 and row i of a window column (rows above and below the
  # window are 0); tf.where lists them column by column, i.e. in column-major image order.
  change = tf.where(tf.not_equal(cols[:, 1:], cols[:, :-1]))  # [k, 2] (column, row)
  pos = (tf.cast(x0, tf.int64) + change[:, 0]) * h64 + tf.cast(y0, tf.int64) + change[:, 1]
  # A window as tall as the image ends one column where the next begins: a run of 1s that
  # continues into the next column gives the same position twice, which is no change at all.
  same = tf.equal(pos[1:], pos[:-1])
  no_false = tf.zeros([1], tf.bool)
  repeated = tf.logical_or(tf.concat([no_false, same], 0), tf.concat([same, no_false], 0))
  pos = tf.boolean_mask(pos, tf.logical_and(tf.logical_not(repeated), pos < total))
  edges = tf.concat([tf.zeros([1], tf.int64), pos, tf.reshape(total, [1])], 0)
  return edges[1:] - edges[:-1]


def run_lengths_to_string(counts):
  """pycocotools' compressed RLE string (`rleToString`) of run lengths int64 [R] -> string [].

  Each count from the fourth on is written as its difference to the count two before; each
  value is split into 5-bit groups, low first, with bit 0x20 set while more groups follow, and
  offset by 48 into printable ASCII.
  """
  counts = tf.cast(counts, tf.int64)
  r = tf.shape(counts)[0]
  earlier = tf.concat([tf.zeros([2], tf.int64), counts[:-2]], 0)[:r]
  x = counts - tf.where(tf.range(r) > 2, earlier, 0)
  shifted = tf.bitwise.right_shift(x[:, None], tf.range(0, 5 * _CHUNKS, 5, dtype=tf.int64)[None])
  group = tf.bitwise.bitwise_and(shifted, 0x1F)
  rest = tf.bitwise.right_shift(shifted, 5)  # arithmetic: negative values end in -1
  sign = tf.not_equal(tf.bitwise.bitwise_and(group, 0x10), 0)
  more = tf.where(sign, tf.not_equal(rest, -1), tf.not_equal(rest, 0))
  # Group k is written when every earlier group said "more".
  written = tf.concat([tf.ones([r, 1], tf.bool), more[:, :-1]], 1)
  written = tf.cast(tf.math.cumprod(tf.cast(written, tf.int32), axis=1), tf.bool)
  chars = group + tf.where(more, tf.constant(0x20, tf.int64), 0) + 48
  return tf.strings.unicode_encode(tf.cast(tf.boolean_mask(chars, written), tf.int32), "UTF-8")


def encode_masks(masks, boxes_yxyx, num_detections, height, width, threshold: float = 0.5):
  """Box-relative mask probabilities -> COCO compressed RLE strings in image pixels.

  Args:
    masks: [D, M, M] probabilities relative to each box; boxes_yxyx: [D, 4] in image pixels.
    num_detections: int scalar, valid entries first; height, width: int scalars, the image.
    threshold: a pixel is in the mask when its pasted probability is >= threshold (COCO
      evaluation's binary masks).
  Returns:
    string [D]: pycocotools `counts` of each valid detection's binary mask over the whole
    height x width image; "" for entries at and beyond num_detections.
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  n = tf.cast(num_detections, tf.int32)

  def one(args):
    mask, box = args
    probs, y0, x0 = paste_window(mask, box, height, width)
    return run_lengths_to_string(window_run_lengths(probs >= threshold, y0, x0, height, width))

  # Two windows at a time: a box as large as the image costs 5 bytes per pixel while encoded.
  strings = tf.map_fn(one, (masks[:n], boxes_yxyx[:n]),
                      fn_output_signature=tf.TensorSpec([], tf.string),
                      parallel_iterations=2)
  return tf.pad(strings, [[0, tf.shape(masks)[0] - n]])
