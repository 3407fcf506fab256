"""compare_curves on the event files of two tiny runs (from scratch, and fine-tuned from the tiny
pre-training): figure, table and CSV values equal the runs' eval_metrics.jsonl, on the
iterations, images and images-incl-pretraining axes; missing metrics and runs without eval
events get clear messages; TensorBoard serves the scalars and prediction pictures."""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from rethink_tf.tools import compare_curves

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def second_run(tiny_pretrained_run):
  """The tiny config fine-tuned from the tiny pre-training, evaluated at steps 10 and 20."""
  _, model_dir, p, t = tiny_pretrained_run
  assert p.returncode == 0, p.stderr[-3000:]
  assert t.returncode == 0, t.stderr[-3000:]
  return model_dir


def _jsonl(model_dir):
  return [json.loads(l) for l in open(model_dir / "eval_metrics.jsonl")]


def test_figure_table_and_csv_match_the_runs_metrics(tiny_reference_run, second_run, tmp_path):
  ref_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-3000:]
  x = "images_incl_pretraining"
  runs = [
      compare_curves.Run("reference", str(ref_dir), x),
      compare_curves.Run("pretrained", str(second_run), x)
  ]
  out, table, csv_path = tmp_path / "f.png", tmp_path / "t.md", tmp_path / "c.csv"
  result = compare_curves.compare(runs, ["bbox/AP", "segm/AP"], x, str(out), str(table),
                                  str(csv_path))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert result["messages"] == []
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  # The pretrained run's axis starts at the pre-training's 30 steps x 16 images.
  offsets = {"reference": 0.0, "pretrained": 480.0}
  for name, model_dir in (("reference", ref_dir), ("pretrained", second_run)):
    lines = _jsonl(model_dir)
    assert [l["step"] for l in lines] == [10, 20]
    for metric in ("bbox/AP", "segm/AP"):
      iou, key = metric.split("/")
      got = [r for r in rows if r["run"] == name and r["metric"] == metric]
      assert [int(r["step"]) for r in got] == [10, 20]
      # global batch 2, plus the images seen in pre-training
      assert [float(r[x]) for r in got] == [offsets[name] + 20.0, offsets[name] + 40.0]
      for row, line in zip(got, lines):
        assert float(row["value"]) == pytest.approx(line[iou][key], rel=1e-6, abs=1e-7)
      summary = result["summary"][name][metric]
      values = [l[iou][key] for l in lines]
      assert summary["final"] == pytest.approx(values[-1], rel=1e-6, abs=1e-7)
      assert summary["best"] == pytest.approx(max(values), rel=1e-6, abs=1e-7)
      assert f"| {name} | {metric} | {values[-1]:.4f} | 20 |" in table.read_text()
  # Evaluation also wrote pictures of its predictions on fixed validation images.
  pictures = compare_curves.read_images(str(second_run / "eval"), "predictions")
  assert [step for step, _ in pictures] == [10, 20]
  assert all(len(images) == 4 and images[0].shape == (64, 64, 3) for _, images in pictures)
  # The LR decays of the tiny schedule (steps 16 and 19) are marked, from schedule.json.
  assert runs[0].drops == runs[1].drops == [16, 19]
  assert json.load(open(ref_dir / "schedule.json"))["global_batch_size"] == 2
  # Without schedule.json (runs of earlier versions) the decays come from the run's config.gin.
  older = tmp_path / "older"
  shutil.copytree(ref_dir, older, ignore=shutil.ignore_patterns("schedule.json", "ckpt-*"))
  assert compare_curves.Run("older", str(older), "iterations").drops == [16, 19]


def test_run_without_eval_events_and_unknown_metric(tiny_reference_run, tmp_path):
  ref_dir, _ = tiny_reference_run
  empty = tmp_path / "empty"
  empty.mkdir()
  runs = [
      compare_curves.Run("reference", str(ref_dir), "iterations"),
      compare_curves.Run("empty", str(empty), "iterations")
  ]
  result = compare_curves.compare(runs, ["bbox/AP", "keypoints/AP"], "iterations",
                                  str(tmp_path / "f.png"))
  msgs = " ".join(result["messages"])
  assert "run empty: no 'bbox/AP'" in msgs and "no eval events" in msgs
  assert "run reference: no 'keypoints/AP'" in msgs
  with pytest.raises(compare_curves.CurveError, match="nothing to plot"):
    compare_curves.compare(runs[1:], ["bbox/AP"], "iterations", str(tmp_path / "g.png"))
  cli = subprocess.run([
      sys.executable, "-m", "rethink_tf.tools.compare_curves", f"--run=empty={empty}",
      f"--output={tmp_path / 'h.png'}"
  ],
                       cwd=REPO_ROOT,
                       capture_output=True,
                       text=True,
                       timeout=300)
  assert cli.returncode != 0 and "compare_curves: nothing to plot" in cli.stderr
  with pytest.raises(compare_curves.CurveError, match="images_seen"):
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "operative_config.gin").write_text(
        "init_config.mode = 'pretrained'\ninit_config.checkpoint = '/nowhere/ckpt'\n"
        "TrainConfig.global_batch_size = 2\n")
    compare_curves.Run("pre", str(tmp_path / "pre"), "images_incl_pretraining")


def test_tensorboard_serves_scalars_and_prediction_images(tiny_reference_run, tmp_path):
  """TensorBoard on 127.0.0.1 lists the loss, AP and picture tags of a tiny run."""
  import socket
  import time
  import urllib.request
  ref_dir, r = tiny_reference_run
  assert r.returncode == 0, r.stderr[-3000:]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  tb = subprocess.Popen([
      sys.executable, "-m", "tensorboard.main", f"--logdir={ref_dir}", "--host=127.0.0.1",
      f"--port={port}", "--reload_interval=0"
  ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True)
  try:
    base = f"http://127.0.0.1:{port}/data/plugin"
    deadline, tags = time.time() + 120, {}
    while time.time() < deadline:
      try:
        tags = json.load(urllib.request.urlopen(f"{base}/scalars/tags", timeout=5))
        if "train" in tags and "eval" in tags:
          break
      except OSError:
        pass
      time.sleep(1)
    assert {"losses/total_loss", "losses/mask_loss", "learning_rate"} <= set(tags["train"])
    assert {"bbox/AP", "segm/AP"} <= set(tags["eval"])
    images = json.load(urllib.request.urlopen(f"{base}/images/tags", timeout=10))
    assert "predictions" in images["eval"]
  finally:
    tb.terminate()
    tb.wait(timeout=30)
