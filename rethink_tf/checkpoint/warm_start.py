"""Warm start: a new run initialized from another run's checkpoint, variable by variable.

Detectron's TRAIN.WEIGHTS (detectron2's MODEL.WEIGHTS) for a model that may differ from the one
that wrote the checkpoint: every variable whose checkpoint path and shape match is restored,
the others keep their initialization and are listed. Written for the paper's X152 recipe run
in two parts: a plain Mask R-CNN checkpoint continued as Cascade R-CNN. The backbone, FPN,
RPN, mask head, stage-1 box head and classifier carry over; the class-specific box regressor
(4K outputs) does not fit the class-agnostic one (4 outputs) and stages 2-3 are new.
"""

import collections
from typing import Any, Dict

import tensorflow as tf

from rethink_tf.checkpoint import legacy_layout

ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def _escape(name: str) -> str:
  """A checkpoint path component (TF escapes '.' and '/' in object names)."""
  return name.replace(".", "..").replace("/", ".S")


def checkpoint_keys(root, prefix: str) -> Dict[str, tf.Variable]:
  """{checkpoint key: variable} of every variable reachable from `root`, keyed as
  `tf.train.Checkpoint(**{prefix: root})` writes them: each object under its shortest path
  from the root (breadth first, as TF's object graph)."""
  keys, seen = {}, set()
  queue = collections.deque([(root, prefix)])
  while queue:
    obj, path = queue.popleft()
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if isinstance(obj, tf.Variable):
      keys[f"{path}/.ATTRIBUTES/VARIABLE_VALUE"] = obj
      continue
    for name, child in obj._trackable_children().items():  # the checkpoint's own traversal
      queue.append((child, f"{path}/{_escape(name)}"))
  return keys


def warm_start(model, checkpoint: str) -> Dict[str, Any]:
  """Assigns every model variable whose key and shape `checkpoint` (written by the trainer:
  `model/...`) holds. Returns {"restored": keys, "shape_mismatch": keys, "new": keys} and
  "step" (the checkpoint's optimizer step, or 0)."""
  reader = tf.train.load_checkpoint(checkpoint)
  shapes = reader.get_variable_to_shape_map()
  report = {"restored": [], "shape_mismatch": [], "new": []}
  root = legacy_layout.restore_root(model, checkpoint)
  for key, var in checkpoint_keys(root, "model").items():
    short = key[len("model/"):-len("/.ATTRIBUTES/VARIABLE_VALUE")]
    if key not in shapes:
      report["new"].append(short)
    elif list(shapes[key]) != list(var.shape):
      report["shape_mismatch"].append(f"{short} {shapes[key]} -> {var.shape.as_list()}")
    else:
      var.assign(reader.get_tensor(key))
      report["restored"].append(short)
  if not report["restored"]:
    raise ValueError(f"warm start: {checkpoint} holds none of this model's variables (is it a "
                     "checkpoint written by rethink_tf.train?)")
  report["step"] = int(reader.get_tensor(ITERATIONS_KEY)) if ITERATIONS_KEY in shapes else 0
  return report
