"""docs/systems.md is the rendering of the measured metrics saved next to it (docs/systems.json),
and those hold each arm's single-scale and test-time-augmented AP as `rethink_tf.evaluate`
printed them."""

import json
import os

from dev import systems_table

from conftest import REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "systems.md")


def _metrics(ap, ap75, **extra):
  return {"bbox": {"AP": ap, "AP50": ap + 0.2, "AP75": ap75}, "segm": {"AP": ap - 0.01}, **extra}


def test_render_puts_each_measurement_in_its_row():
  results = {
      "plain": {
          "gin_file": "a.gin", "train_seconds": 600.0, "single_seconds": 20.0, "tta_seconds": 60.0,
          "single": _metrics(0.5, 0.4), "tta": _metrics(0.55,
                                                        0.45,
                                                        tta={"scales": [96, 160], "flip": True})
      }, "cascade": {
          "gin_file": "b.gin", "train_seconds": 700.0, "single_seconds": 21.0,
          "single": _metrics(0.52, 0.48)
      }, "keypoints": {
          "gin_file": "c.gin", "train_seconds": 650.0, "single_seconds": 22.0,
          "single": _metrics(0.5, 0.4, keypoints={"AP": 0.3, "AP50": 0.6, "AP75": 0.2})
      }
  }
  page = systems_table.render(results, [], "a machine")
  rows = page.splitlines()
  assert "| Mask R-CNN | single scale | 0.500 | 0.700 | 0.400 | 0.490 | 20 |" in rows
  assert ("| Mask R-CNN | flip x short sides 96, 128, 160 | 0.550 | 0.750 | 0.450 | 0.540 "
          "| 60 |") in rows
  assert "| Cascade Mask R-CNN | single scale | 0.520 | 0.720 | 0.480 | 0.510 | 21 |" in rows
  assert "| Keypoint + Mask R-CNN | 0.300 | 0.600 | 0.200 |" in rows
  assert "| cascade | `b.gin` | 700 |" in rows


def test_committed_page_is_the_rendering_of_its_measurements():
  saved = json.load(open(os.path.splitext(DOC)[0] + ".json"))
  results = saved["results"]
  assert set(results) == {"plain", "cascade", "keypoints"}
  for arm in ("plain", "cascade"):
    for test in ("single", "tta"):
      assert 0.0 <= results[arm][test]["bbox"]["AP75"] <= 1.0, (arm, test)
  assert results["plain"]["tta"]["tta"]["flip"] is True
  assert 0.0 <= results["keypoints"]["single"]["keypoints"]["AP"] <= 1.0
  assert saved["params"] == []  # the demo configurations as committed, nothing overridden
  assert "/" not in json.dumps([
      r[t]["checkpoint"] for r in results.values() for t in ("single", "tta") if t in r
  ])  # no machine paths
  assert open(DOC).read() == systems_table.render(
      results, saved["params"], saved["machine"],
      saved.get("note",
                "")), ("docs/systems.md is stale: python -m dev.systems_table --report_only")
