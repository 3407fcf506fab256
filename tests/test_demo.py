"""The README's demo end to end (opt-in: `python -m pytest -m slow tests/test_demo.py`, about 14
minutes on 2 cores): the GN model trained from scratch on the synthetic shapes reaches the
figures its gin file promises."""

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_demo_reaches_its_promised_box_and_mask_ap(tmp_path):
  r = subprocess.run([
      sys.executable, "-m", "rethink_tf.train", "--gin_file=gin_configs/demo/shapes_scratch.gin",
      f"--model_dir={tmp_path / 'shapes_scratch'}"
  ],
                     cwd=REPO_ROOT,
                     capture_output=True,
                     text=True,
                     timeout=3600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "final: box AP" in r.stdout
  metrics = json.loads(r.stdout.strip().splitlines()[-1])
  # gin_configs/demo/shapes_scratch.gin: "Expect: box AP >= 0.50 and mask AP >= 0.45".
  assert metrics["bbox"]["AP"] >= 0.50 and metrics["segm"]["AP"] >= 0.45, metrics
