"""The miniature study: its plan (shared prefixes fork before the first LR decay), the
orchestration of its stages (order, forks, resume, failures), the reading of its numbers, and
the report written from two real tiny runs."""

import json
import os
import stat
import sys

import pytest

from rethink_tf.tools import study, study_report
from rethink_tf.training import study_plan
from rethink_tf.training.study_plan import Segment, StudyConfig


def _cfg(**kw):
  args = dict(schedules=(1, 2, 3),
              steps_per_x=150,
              global_batch_size=8,
              warmup_steps=50,
              eval_every_steps=50,
              less_data_num_train=200,
              less_data_schedules=(2,))
  args.update(kw)
  return StudyConfig(**args)


def test_plan_forks_each_shorter_schedule_at_its_first_decay():
  cfg = _cfg()
  assert [cfg.schedule(n).total_steps for n in (1, 2, 3)] == [150, 300, 450]
  # 1x decays at 2/3 and 8/9 (Detectron's 60k/80k of 90k), longer ones in the last 2/3 and
  # 2/9 of a 1x (the paper's last 60k and 20k iterations).
  assert [cfg.schedule(n).boundaries for n in (1, 2, 3)] == [(100, 133), (200, 267), (350, 417)]
  assert study_plan.plan(cfg) == [
      Segment("scratch_3x", "scratch", 3, None, stop_at=100),
      Segment("scratch_1x", "scratch", 1, None, fork_from="scratch_3x"),
      Segment("scratch_3x", "scratch", 3, None, stop_at=200),
      Segment("scratch_2x", "scratch", 2, None, fork_from="scratch_3x"),
      Segment("scratch_3x", "scratch", 3, None),
      Segment("pretrained_3x", "pretrained", 3, None, stop_at=100),
      Segment("pretrained_1x", "pretrained", 1, None, fork_from="pretrained_3x"),
      Segment("pretrained_3x", "pretrained", 3, None, stop_at=200),
      Segment("pretrained_2x", "pretrained", 2, None, fork_from="pretrained_3x"),
      Segment("pretrained_3x", "pretrained", 3, None),
      Segment("scratch_2x_200img", "scratch", 2, 200),
      Segment("pretrained_2x_200img", "pretrained", 2, 200)
  ]
  # Up to a fork step, the shorter and the longest schedules have the same LR at every step.
  for n in (1, 2):
    fork = study_plan.fork_step(cfg, n)
    assert all(cfg.schedule(n).lr_at(s) == cfg.schedule(3).lr_at(s) for s in range(fork))
    assert cfg.schedule(n).lr_at(fork) < cfg.schedule(3).lr_at(fork)
  params = study_plan.gin_params(cfg, Segment("pretrained_2x_200img", "pretrained", 2, 200),
                                 "/p/backbone")
  assert "init_config.checkpoint = '/p/backbone'" in params
  assert "SyntheticDataset.num_train = 200" in params
  assert "TrainConfig.stop_at_step = None" in params
  assert not any(
      "init_config" in p
      for p in study_plan.gin_params(cfg, Segment("scratch_1x", "scratch", 1, None), "/p/backbone"))


def test_plan_rejects_a_decay_within_the_warmup():
  with pytest.raises(ValueError, match="within the 50-step warmup"):
    study_plan.plan(_cfg(steps_per_x=60, eval_every_steps=10))


def test_reading_states_catch_up_and_shortfall():
  cfg = _cfg(schedules=(1, 2, 3, 4), catch_up_tolerance=0.01)
  caught = study_report.reading(
      cfg, {
          "scratch": {1: 0.20, 2: 0.40, 3: 0.52, 4: 0.56},
          "pretrained": {1: 0.45, 2: 0.55, 3: 0.56, 4: 0.555}
      }, 96000, "box AP")
  text = " ".join(caught)
  assert ("At 1x (150 iterations) scratch has box AP 0.200 vs pretrained 0.450 (-25.0 points)"
          in text)
  # Scratch is within a point of the best pretrained (0.560 at 3x) at 4x; pretrained got within
  # that point at 2x (0.55): 600 vs 300 iterations; images: 4800 vs 2400 + 96000.
  assert "Scratch caught up: at 4x it reaches 0.560" in text
  assert "scratch needed 2.0x the fine-tuning iterations (600 vs 300)" in text
  assert "scratch saw 4800 images vs 98400 for pretrained (0.05x)" in text
  assert "behind by more than the tolerance at: 1x, 2x, 3x." in text
  assert "The gap goes from -25.0 points at 1x to +0.5 at 4x (largest magnitude 25.0)." in text
  # Without the pretrained curves, the first pretrained final at or above each scratch final.
  assert ("At equal AP (pretrained is evaluated every 50 iterations and at each schedule's end, "
          "so its iterations are upper bounds): scratch's 1x result (0.200, 150 iterations) was "
          "reached by pretrained "
          "at iteration 150 (0.450): 1.0x the iterations; scratch's 2x result (0.400, 300 "
          "iterations) was reached by pretrained at iteration 150 (0.450): 2.0x") in text
  with_curves = " ".join(
      study_report.reading(cfg, {
          "scratch": {1: 0.20, 2: 0.40, 3: 0.52, 4: 0.56},
          "pretrained": {1: 0.45, 2: 0.55, 3: 0.56, 4: 0.555}
      },
                           96000,
                           "box AP",
                           pretrained_points=[(50, 0.15), (100, 0.3), (150, 0.45), (300, 0.55),
                                              (450, 0.56)]))
  assert ("scratch's 1x result (0.200, 150 iterations) was reached by pretrained at iteration "
          "100 (0.300): 1.5x") in with_curves
  short = " ".join(
      study_report.reading(cfg, {
          "scratch": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.35},
          "pretrained": {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
      }, 0, "mask AP"))
  assert ("Scratch did not catch up within 4x: its best mask AP is 0.350 (at 4x), 15.0 points"
          in short)
  assert "No box AP to compare" in study_report.reading(cfg, {"scratch": {}, "pretrained": {}}, 0,
                                                        "box AP")[0]


FAKE = r'''
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
  f.write(json.dumps(args) + "\n")
model_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--model_dir="))
os.makedirs(model_dir, exist_ok=True)
if args[1] == "rethink_tf.pretrain":
  json.dump({{"images_seen": 640}}, open(os.path.join(model_dir, "backbone.json"), "w"))
  sys.exit(0)
if {fail!r} and {fail!r} in model_dir:
  print("boom"); sys.exit(3)
p = dict(a.split("=", 1)[1].split(" = ") for a in args if a.startswith("--gin_param="))
stop = p["TrainConfig.stop_at_step"]
end = {totals!r}[p["nx_schedule.num_x"]] if stop == "None" else int(stop)
state = os.path.join(model_dir, "checkpoint")
start = int(open(state).read().split('"')[1].split("-")[1]) if os.path.exists(state) else 0
with open(os.path.join(model_dir, "eval_metrics.jsonl"), "a") as f:
  for step in range(start + 50, end + 1, 50):
    f.write(json.dumps({{"step": step}}) + "\n")
open(state, "w").write('model_checkpoint_path: "ckpt-%d"\n' % end)
'''


def _fake_python(tmp_path, fail=""):
  log = tmp_path / "calls.jsonl"
  script = tmp_path / "fake.py"
  totals = {str(n): _cfg().schedule(n).total_steps for n in (1, 2, 3)}
  script.write_text(FAKE.format(totals=totals, log=str(log), fail=fail))
  exe = tmp_path / "python"
  exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
  exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
  return str(exe), log


def _calls(log):
  out = []
  for line in open(log):
    args = json.loads(line)
    d = next(a.split("=", 1)[1] for a in args if a.startswith("--model_dir="))
    stop = next((a.split(" = ")[1] for a in args if "stop_at_step" in a), None)
    out.append((args[1], os.path.basename(d), stop))
  return out


def test_study_runs_stages_in_order_forks_copies_and_resumes(tmp_path):
  cfg = _cfg()
  exe, log = _fake_python(tmp_path)
  out = tmp_path / "study"
  study.run_study(cfg, str(out), python=exe)
  train = [c for c in _calls(log) if c[0] == "rethink_tf.train"]
  assert _calls(log)[0][:2] == ("rethink_tf.pretrain", "pretrain")
  assert [(run, stop) for _, run, stop in train
         ] == [(s.run, str(s.stop_at)) for s in study_plan.plan(cfg)]
  steps = {
      run: [json.loads(line)["step"] for line in open(out / run / "eval_metrics.jsonl")]
      for run in os.listdir(out)
      if (out / run / "eval_metrics.jsonl").exists()
  }
  # A fork carries the longest run's evaluations up to the fork, then its own.
  assert steps["scratch_1x"] == [50, 100, 150]
  assert steps["pretrained_2x"] == [50, 100, 150, 200, 250, 300]
  assert steps["scratch_3x"] == list(range(50, 451, 50))
  assert steps["pretrained_2x_200img"] == list(range(50, 301, 50))
  # Only a fork changes its run's config (the shorter schedule), and says so.
  forks = {s.run for s in study_plan.plan(cfg) if s.fork_from}
  assert forks
  for c in map(json.loads, open(log)):
    run = next((a.split("/")[-1] for a in c if a.startswith("--model_dir=")), None)
    assert ("--allow_config_change" in c) == (run in forks), c
  pre = [c for c in map(json.loads, open(log)) if any("pretrained_" in a for a in c)]
  assert all(f"--gin_param=init_config.checkpoint = '{out}/pretrain/backbone'" in c for c in pre)
  times = [json.loads(line) for line in open(out / study.TIMES_FILE)]
  assert [t["stage"] for t in times][:3] == ["pretrain", "scratch_3x", "scratch_1x"]
  # Everything is complete: a second invocation starts no process.
  n = len(open(log).readlines())
  study.run_study(cfg, str(out), python=exe)
  assert len(open(log).readlines()) == n


def test_study_failure_names_the_stage_and_its_log(tmp_path):
  exe, _ = _fake_python(tmp_path, fail="pretrained_3x")
  out = tmp_path / "study"
  with pytest.raises(study.StudyError,
                     match=r"segment pretrained_3x failed \(exit 3\); log: " +
                     str(out / "logs" / "pretrained_3x.log")) as e:
    study.run_study(_cfg(), str(out), python=exe)
  assert "boom" in str(e.value)
  # What finished before the failure is kept: the scratch runs are complete.
  assert (out / "scratch_3x" /
          "checkpoint").read_text().startswith('model_checkpoint_path: "ckpt-450"')


def test_report_from_two_tiny_runs(tiny_reference_run, tiny_pretrained_run, tmp_path):
  """A 1x study whose runs are the tiny scratch and pretrained runs (20 steps at batch 2)."""
  ref_dir, r = tiny_reference_run
  pre_dir, pre_run, p, t = tiny_pretrained_run
  assert r.returncode == 0 and p.returncode == 0 and t.returncode == 0
  out = tmp_path / "study"
  out.mkdir()
  os.symlink(ref_dir, out / "scratch_1x")
  os.symlink(pre_run, out / "pretrained_1x")
  os.symlink(pre_dir, out / "pretrain")
  (out / study.TIMES_FILE).write_text(json.dumps({"stage": "pretrain", "seconds": 60}) + "\n")
  cfg = StudyConfig(schedules=(1,),
                    steps_per_x=20,
                    global_batch_size=2,
                    warmup_steps=5,
                    eval_every_steps=10,
                    less_data_num_train=0)
  assert cfg.schedule(1).total_steps == 20
  report = open(study_report.write_report(cfg, str(out))).read()
  final = {
      name: json.loads(open(d / "eval_metrics.jsonl").readlines()[-1])
      for name, d in (("scratch", ref_dir), ("pretrained", pre_run))
  }
  row = (f"| 1x | 20 | {final['scratch']['bbox']['AP']:.3f} | "
         f"{final['pretrained']['bbox']['AP']:.3f} | {final['scratch']['segm']['AP']:.3f} | "
         f"{final['pretrained']['segm']['AP']:.3f} |")
  assert row in report
  assert "480 images seen" in report and "At 1x (20 iterations) scratch has box AP" in report
  for name in ("final_ap_by_schedule", "curves_iterations", "curves_images_incl_pretraining",
               "curves_all_schedules"):
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"({name}.png)" in report
  assert "Sum of the stages' wall times: **1.0 min**" in report
