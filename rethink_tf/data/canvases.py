"""Training canvases that fit the images: a few static shapes instead of one square, and batches
formed from one canvas at a time (detectron2's aspect-ratio grouping, done in tf.data).

Real photos are landscape or portrait. Padded to one square canvas that holds the largest
resized image (1344 x 1344 at the paper's 800/1333), a COCO image fills half of it, and the
backbone, FPN and RPN compute over the rest; GroupNorm's statistics see it too. Here each
image goes to the smallest canvas (by area) that holds its resized size, and each global batch
is formed from images of one canvas, so every compiled program still sees one static shape
(one trace, one XLA compilation per canvas) and every replica of a step the same canvas.

Grouping is done in fixed blocks of `block_steps` global batches of the example stream: within
a block the images of each canvas fill whole batches in stream order, and the few left over
(fewer than a batch per canvas) fill batches on the largest canvas, which holds every image.
A block always yields exactly `block_steps` batches, so a resumed run skips whole blocks of
records undecoded and then the batches of the current block: it sees the batches an
uninterrupted run would (deterministic, O(1) to resume). Batches come in the order of their
first image in the stream.
"""

from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

Canvas = Tuple[int, int]


def round_up(x: int, divisibility: int) -> int:
  return -(-int(x) // divisibility) * divisibility


def derived_canvases(padded_size: Sequence[int], max_short_side: int,
                     divisibility: int) -> List[Canvas]:
  """Landscape (short x long), portrait (long x short) and the square (or whatever
  `padded_size` is) that holds both; duplicates removed (a square canvas alone when the short
  side reaches the long one, as for square synthetic images).

  Args:
    padded_size: (h, w), the largest canvas (holds any resized image).
    max_short_side: the largest short side a resized image can have (the top of the scale
      jitter), rounded up to `divisibility`.
  """
  ph, pw = int(padded_size[0]), int(padded_size[1])
  short = round_up(max_short_side, divisibility)
  out = []
  for canvas in ((min(short, ph), pw), (ph, min(short, pw)), (ph, pw)):
    if canvas not in out:
      out.append(canvas)
  return out


def largest(canvases: Sequence[Canvas]) -> int:
  """Index of the canvas that holds every other one; ValueError if none does."""
  h = max(c[0] for c in canvases)
  w = max(c[1] for c in canvases)
  if (h, w) not in [tuple(c) for c in canvases]:
    raise ValueError(f"canvases {list(canvases)} have no member holding all the others "
                     f"(add ({h}, {w}))")
  return [tuple(c) for c in canvases].index((h, w))


def canvas_index(size, canvases: Sequence[Canvas]):
  """The smallest canvas (by area) holding `size` (float or int [..., 2] h, w); the largest
  canvas when none does (or the size is not finite).

  Returns int32 [...].
  """
  size = tf.cast(size, tf.float32)
  hw = tf.constant([[float(h), float(w)] for h, w in canvases])  # [C, 2]
  area = tf.constant([float(h * w) for h, w in canvases])
  holds = tf.reduce_all(size[..., None, :] <= hw, axis=-1)  # [..., C]
  cost = tf.where(holds, area, float("inf"))
  best = tf.argmin(cost, axis=-1, output_type=tf.int32)
  return tf.where(tf.reduce_any(holds, axis=-1), best, largest(canvases))


def group_block(canvas, group: int, num_canvases: int, fallback: int):
  """The order of one block of examples so that every `group` consecutive ones share a canvas.

  Args:
    canvas: int32 [N] each example's canvas (N a multiple of `group`).
    fallback: the canvas holding every image: examples left over after their own canvas's
      whole groups (fewer than `group` per canvas) are grouped there.
  Returns:
    (order int32 [N]: positions in the block, assigned canvas int32 [N] in that order). Groups
    are in the order of their first example; within a group, in block order.
  """
  n = tf.shape(canvas)[0]
  pos = tf.range(n)

  def ranks(c):
    """Each example's rank among the examples of its canvas, and the canvases' counts."""
    onehot = tf.one_hot(c, num_canvases, dtype=tf.int32)
    before = tf.cumsum(onehot, axis=0, exclusive=True)
    return tf.gather(before, c, axis=1, batch_dims=1), tf.reduce_sum(onehot, axis=0)

  rank, counts = ranks(canvas)
  whole = counts // group * group
  assigned = tf.where(rank < tf.gather(whole, canvas), canvas, fallback)
  rank, counts = ranks(assigned)
  starts = tf.cumsum(counts, exclusive=True)
  by_canvas = tf.argsort(assigned * n + pos, stable=True)  # block positions, canvas by canvas
  first = tf.gather(by_canvas, tf.gather(starts, assigned) + rank // group * group)
  order = tf.argsort(first * n + pos, stable=True)
  return order, tf.gather(assigned, order)


def grouped_stream(ds: tf.data.Dataset,
                   canvas_fn,
                   group: int,
                   block_steps: int,
                   num_canvases: int,
                   fallback: int,
                   start_step: int = 0) -> tf.data.Dataset:
  """Reorders an endless stream of (index, record) into groups of `group` examples of one
  canvas: (index, record, canvas) elements, every `group` consecutive ones on one canvas.

  canvas_fn(index, record) -> int32 canvas (cheap: from the record's size features, never its
  decoded image). start_step: groups already consumed (a resumed run): whole blocks of records
  are skipped before anything is read from them, then the groups of the current block.
  """
  block = group * block_steps
  ds = ds.skip((start_step // block_steps) * block)
  ds = ds.map(lambda i, r: (i, r, canvas_fn(i, r)),
              num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(block, drop_remainder=True)

  def reorder(index, record, canvas):
    order, assigned = group_block(canvas, group, num_canvases, fallback)
    return tf.gather(index, order), tf.gather(record, order), assigned

  ds = ds.map(reorder).unbatch()
  return ds.skip((start_step % block_steps) * group)


def pixel_ratio(sizes,
                canvases: Sequence[Canvas],
                divisibility: int,
                group: int = 1,
                block_steps: int = 1) -> Tuple[float, float]:
  """(canvas pixels / detectron2's, the images' share of the canvas pixels) for a stream of
  resized sizes [N, 2] (N a multiple of group * block_steps) grouped as training groups them
  (`canvas_index`, then `group_block`: images left over in a block count at the largest
  canvas); detectron2's rule pads each image (batch 1) to its size rounded up to
  `divisibility`."""
  sizes = tf.cast(sizes, tf.float32)
  picked = canvas_index(sizes, canvases)
  block = group * block_steps
  assigned = tf.concat([
      group_block(picked[i:i + block], group, len(canvases), largest(canvases))[1]
      for i in range(0, int(sizes.shape[0]), block)
  ], 0)
  canvas_hw = tf.gather(tf.constant(canvases, tf.float32), assigned)
  ours = float(tf.reduce_sum(canvas_hw[:, 0] * canvas_hw[:, 1]))
  d = float(divisibility)
  fit = tf.math.ceil(sizes / d) * d
  theirs = float(tf.reduce_sum(fit[:, 0] * fit[:, 1]))
  return ours / theirs, float(tf.reduce_sum(sizes[:, 0] * sizes[:, 1])) / ours


def check(canvases: Optional[Sequence[Sequence[int]]], padded_size: Sequence[int],
          divisibility: int) -> Optional[List[Canvas]]:
  """A bound canvas list, validated: multiples of `divisibility`, the largest equal to
  `padded_size` (the canvas the model is built at and every image fits). ValueError names the
  problem."""
  if canvases is None:
    return None
  out = [(int(c[0]), int(c[1])) for c in canvases]
  if not out:
    raise ValueError("InputConfig.train_canvases is empty: bind None (derived) or canvases")
  bad = [c for c in out if c[0] % divisibility or c[1] % divisibility]
  if bad:
    raise ValueError(f"InputConfig.train_canvases {bad} are not multiples of "
                     f"size_divisibility = {divisibility}")
  union = out[largest(out)]
  if union != tuple(int(s) for s in padded_size):
    raise ValueError(f"InputConfig.train_canvases: the largest canvas {union} must be "
                     f"padded_size {tuple(padded_size)} (it holds every resized image)")
  return out
