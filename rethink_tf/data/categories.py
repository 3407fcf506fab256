"""Category id -> name maps: COCO's 80 categories, the synthetic shapes, or a user's label map."""

import json
import os
from typing import Dict, Optional, Sequence

# The 80 COCO 2017 instance categories under their (sparse) dataset ids.
COCO_CATEGORY_NAMES: Dict[int, str] = dict(
    enumerate([
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic light", "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat",
        "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack",
        "umbrella", None, None, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
        "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl",
        "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
        "cake", "chair", "couch", "potted plant", "bed", None, "dining table", None, None, "toilet",
        None, "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
        "toaster", "sink", "refrigerator", None, "book", "clock", "vase", "scissors", "teddy bear",
        "hair drier", "toothbrush"
    ],
              start=1))
COCO_CATEGORY_NAMES = {k: v for k, v in COCO_CATEGORY_NAMES.items() if v is not None}


def read_label_map(path: str) -> Dict[int, str]:
  """A COCO annotation JSON (its "categories") or a JSON object {"id": "name", ...}."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"label map {path}: cannot read it as JSON ({e})") from e
  if isinstance(data, dict) and isinstance(data.get("categories"), list):
    try:
      return {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"label map {path}: every entry of \"categories\" needs an integer "
                       f"\"id\" and a \"name\" ({e})") from e
  if isinstance(data, dict):
    try:
      return {int(k): str(v) for k, v in data.items()}
    except ValueError as e:
      raise ValueError(f"label map {path}: keys must be integer category ids ({e})") from e
  raise ValueError(f"label map {path}: expected a COCO JSON with \"categories\" or an object "
                   "{\"id\": \"name\"}")


def category_names(category_ids: Sequence[int],
                   label_map: Optional[str] = None,
                   annotations: Optional[str] = None,
                   known: Optional[Dict[int, str]] = None):
  """Names for `category_ids`, from the first source that has them all.

  Sources, in order: `label_map` (a file the user passes; it must name every id), `known` (e.g.
  the synthetic set's), the `annotations` JSON when it exists, COCO's names when every id is a
  COCO id. Falls back to the id as text (with the ids returned so the caller can warn).
  Returns (names [len(category_ids)] list of str, missing ids list).
  """
  if label_map:  # an explicit file must be readable and complete
    names = read_label_map(label_map)
    missing = [int(c) for c in category_ids if int(c) not in names]
    if missing:
      raise ValueError(f"label map {label_map} has no name for category ids {missing}")
    return [names[int(c)] for c in category_ids], []
  sources = []
  if known:
    sources.append(known)
  if annotations and os.path.exists(annotations):
    sources.append(read_label_map(annotations))
  sources.append(COCO_CATEGORY_NAMES)
  for names in sources:
    if all(int(c) in names for c in category_ids):
      return [names[int(c)] for c in category_ids], []
  return [str(int(c)) for c in category_ids], [int(c) for c in category_ids]


# Written beside a checkpoint by `rethink_tf.checkpoint.convert_detector`: the classes in the
# model's order, {"categories": [{"id", "name", "contiguous_id"}, ...]}.
CHECKPOINT_CATEGORIES = "categories.json"


def checkpoint_categories(checkpoint: str) -> Optional[str]:
  """The categories file beside a checkpoint prefix, or None."""
  path = os.path.join(os.path.dirname(checkpoint), CHECKPOINT_CATEGORIES)
  return path if os.path.exists(path) else None


def check_checkpoint_categories(checkpoint: str, category_ids: Sequence[int]):
  """A checkpoint that names its classes must be used with the same category ids, in the same
  order (a data config binding other ids would map every class to the wrong category)."""
  path = checkpoint_categories(checkpoint)
  if path is None:
    return
  with open(path) as f:
    ids = [int(c["id"]) for c in json.load(f)["categories"]]
  if ids != [int(c) for c in category_ids]:
    raise ValueError(f"{path} lists the model's classes as category ids {ids[:10]}"
                     f"{'...' if len(ids) > 10 else ''} but InputConfig.category_ids is "
                     f"{list(category_ids)[:10]}{'...' if len(category_ids) > 10 else ''}: "
                     "bind the same ids in the same order (the data gin file overrides them?)")
