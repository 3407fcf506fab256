"""Category names: COCO's table, label maps, fallbacks."""

import json
import os

import pytest

from rethink_tf.data import categories


def test_coco_names_equal_the_annotation_files(testdata):
  for name in ("icevision_coco6", "cocotools_rs_coco4"):
    with open(os.path.join(testdata, "coco", name, "annotations.json")) as f:
      cats = {c["id"]: c["name"] for c in json.load(f)["categories"]}
    assert categories.COCO_CATEGORY_NAMES == cats


def test_sources_in_order(tmp_path):
  label_map = tmp_path / "labels.json"
  label_map.write_text(json.dumps({"1": "cat", "2": "dog"}))
  assert categories.category_names([1, 2], str(label_map)) == (["cat", "dog"], [])
  assert categories.category_names([2], known={2: "square"}) == (["square"], [])
  assert categories.category_names([1, 90]) == (["person", "toothbrush"], [])
  assert categories.category_names([1, 12]) == (["1", "12"], [1, 12])  # 12 is not a COCO id


def test_bad_label_maps_name_the_file(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json: cannot read it as JSON"):
    categories.category_names([1], str(bad))
  partial = tmp_path / "partial.json"
  partial.write_text(json.dumps({"categories": [{"id": 1, "name": "cat"}]}))
  with pytest.raises(ValueError, match=r"partial.json has no name for category ids \[7\]"):
    categories.category_names([1, 7], str(partial))
