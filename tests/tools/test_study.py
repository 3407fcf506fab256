"""The miniature study: its plan (shared prefixes fork before the first LR decay), the
orchestration of its stages (order, forks, resume, failures), the reading of its numbers, and
the report written from two real tiny runs."""

import json
import os
import signal
import stat
import sys
import threading
import time

import gin
import pytest

from rethink_tf.tools import study, study_reading, study_report
from rethink_tf.tools.study_reading import Spread
from rethink_tf.training import study_plan
from rethink_tf.training.study_plan import Segment, StudyConfig

TESTDATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testdata")


def _cfg(**kw):
  args = dict(pretrained_schedules=(1, 2),
              scratch_schedules=(1, 2, 3),
              steps_per_x=150,
              global_batch_size=8,
              warmup_steps=50,
              eval_every_steps=50,
              seeds=(0, 1),
              reference_schedule=2,
              reference_seeds=(0, 1, 2),
              less_data_num_train=(200, 20),
              less_data_schedules=(2,))
  args.update(kw)
  return StudyConfig(**args)


def test_plan_forks_each_shorter_schedule_at_its_first_decay():
  cfg = _cfg()
  assert [cfg.schedule(n).total_steps for n in (1, 2, 3)] == [150, 300, 450]
  # 1x decays at 2/3 and 8/9 (Detectron's 60k/80k of 90k), longer ones in the last 2/3 and
  # 2/9 of a 1x (the paper's last 60k and 20k iterations).
  assert [cfg.schedule(n).boundaries for n in (1, 2, 3)] == [(100, 133), (200, 267), (350, 417)]
  segments = study_plan.plan(cfg)
  chain = lambda init, xs, seed: [  # noqa: E731
      seg for n in xs[:-1] for seg in (Segment(f"{init}_{xs[-1]}x_seed{seed}",
                                               init,
                                               xs[-1],
                                               None,
                                               stop_at=(100 if n == 1 else 200),
                                               seed=seed),
                                       Segment(f"{init}_{n}x_seed{seed}",
                                               init,
                                               n,
                                               None,
                                               fork_from=f"{init}_{xs[-1]}x_seed{seed}",
                                               seed=seed))
  ] + [Segment(f"{init}_{xs[-1]}x_seed{seed}", init, xs[-1], None, seed=seed)]
  assert segments == (
      chain("scratch", (1, 2, 3), 0) + chain("scratch", (1, 2, 3), 1) +
      # The reference configuration's extra seed: scratch 2x alone.
      [Segment("scratch_2x_seed2", "scratch", 2, None, seed=2)] + chain("pretrained", (1, 2), 0) +
      chain("pretrained", (1, 2), 1) + [
          Segment(f"{init}_2x_{k}img_seed0", init, 2, k, seed=0)
          for k in (200, 20)
          for init in ("scratch", "pretrained")
      ])
  assert cfg.seeds_of("scratch", 2) == (0, 1, 2) and cfg.seeds_of("pretrained", 3) == ()
  # Per seed: scratch 450 + fork tails 50 + 100, pretrained 300 + 50; scratch 2x seed 2: 300;
  # less data: 4 x 300.
  assert study_plan.training_steps(cfg) == 2 * (600 + 350) + 300 + 1200
  # Up to a fork step, the shorter and the longest schedules have the same LR at every step.
  for n in (1, 2):
    fork = study_plan.fork_step(cfg, n)
    assert all(cfg.schedule(n).lr_at(s) == cfg.schedule(3).lr_at(s) for s in range(fork))
    assert cfg.schedule(n).lr_at(fork) < cfg.schedule(3).lr_at(fork)
  params = study_plan.gin_params(
      cfg, Segment("pretrained_2x_200img_seed1", "pretrained", 2, 200, seed=1), "/p/backbone")
  assert "init_config.checkpoint = '/p/backbone'" in params
  assert "SyntheticDataset.num_train = 200" in params
  assert "TrainConfig.stop_at_step = None" in params and "TrainConfig.seed = 1" in params
  assert not any("init_config" in p for p in study_plan.gin_params(
      cfg, Segment("scratch_1x_seed0", "scratch", 1, None), "/p/backbone"))


def test_dependencies_let_independent_chains_run_side_by_side():
  cfg = _cfg()
  segments = study_plan.plan(cfg)
  deps = study_plan.dependencies(segments)
  index = {(s.run, s.stop_at): i for i, s in enumerate(segments)}
  # A trunk segment follows the previous one of its run; a fork follows the trunk segment that
  # stopped at its fork step; chains of other seeds and inits start at once (scratch) or after
  # the pre-training (pretrained, -1).
  assert deps[index[("scratch_3x_seed0", 100)]] == ()
  assert deps[index[("scratch_3x_seed0", 200)]] == (index[("scratch_3x_seed0", 100)],)
  assert deps[index[("scratch_1x_seed0", None)]] == (index[("scratch_3x_seed0", 100)],)
  assert deps[index[("scratch_3x_seed1", 100)]] == ()
  assert deps[index[("scratch_2x_seed2", None)]] == ()
  assert deps[index[("pretrained_2x_seed0", 100)]] == (-1,)
  assert deps[index[("pretrained_2x_20img_seed0", None)]] == (-1,)
  assert deps[index[("scratch_2x_20img_seed0", None)]] == ()


def test_short_schedules_can_run_one_seed_and_less_data_its_own_evaluation_period():
  cfg = _cfg(single_seed_below=2, less_data_eval_every_steps=100)
  assert cfg.seeds_of("scratch", 1) == (0,) and cfg.seeds_of("pretrained", 1) == (0,)
  assert cfg.seeds_of("pretrained", 2) == (0, 1) and cfg.seeds_of("scratch", 2) == (0, 1, 2)
  runs = {seg.run for seg in study_plan.plan(cfg)}
  assert "scratch_1x_seed0" in runs and "scratch_1x_seed1" not in runs
  assert "pretrained_1x_seed1" not in runs and "pretrained_2x_seed1" in runs
  # Seed 1 no longer stops its trunk at the 1x fork: 0-200 (2x fork), 200-450.
  assert [s.stop_at for s in study_plan.plan(cfg) if s.run == "scratch_3x_seed1"] == [200, None]
  # Per seed 0: scratch 450 + tails 50 + 100, pretrained 300 + 50; seed 1: scratch 450 + 100,
  # pretrained 300; scratch 2x seed 2: 300; less data: 4 x 300.
  assert study_plan.training_steps(cfg) == (600 + 350) + (550 + 300) + 300 + 1200
  less = Segment("scratch_2x_20img_seed0", "scratch", 2, 20)
  assert "TrainConfig.eval_every_steps = 100" in study_plan.gin_params(cfg, less, "/p")
  full = Segment("scratch_2x_seed0", "scratch", 2, None)
  assert "TrainConfig.eval_every_steps = 50" in study_plan.gin_params(cfg, full, "/p")


def test_only_the_longest_schedules_can_run_every_seed():
  # The decisive points: each arm's two longest schedules (the pretrained arm's plateau, and
  # scratch one beyond); the reference schedule keeps its own seeds.
  cfg = _cfg(pretrained_schedules=(1, 2, 3), scratch_schedules=(1, 2, 3, 4), every_seed_longest=2)
  assert [cfg.seeds_of("pretrained", n) for n in (1, 2, 3)] == [(0,), (0, 1), (0, 1)]
  assert [cfg.seeds_of("scratch", n) for n in (1, 2, 3, 4)] == [(0,), (0, 1, 2), (0, 1), (0, 1)]
  # Seed 1's scratch trunk stops only for the 2x (reference) and 3x forks.
  segments = study_plan.plan(cfg)
  assert [(s.run, s.stop_at) for s in segments if s.seed == 1 and s.init == "scratch"
         ] == [("scratch_4x_seed1", 200), ("scratch_2x_seed1", None), ("scratch_4x_seed1", 350),
               ("scratch_3x_seed1", None), ("scratch_4x_seed1", None)]
  # With single_seed_below as well, a schedule runs every seed only when both allow it.
  cfg = _cfg(scratch_schedules=(1, 2, 3, 4), every_seed_longest=3, single_seed_below=3)
  assert [len(cfg.seeds_of("scratch", n)) for n in (1, 2, 3, 4)] == [1, 3, 2, 2]


def test_longest_chains_are_ranked_first():
  cfg = _cfg()
  segments = study_plan.plan(cfg)
  steps = study_plan.segment_steps(cfg, segments)
  assert sum(steps) == study_plan.training_steps(cfg)
  longest = study_plan.chain_steps(steps, study_plan.dependencies(segments))
  index = {(s.run, s.stop_at): i for i, s in enumerate(segments)}
  # scratch 3x: trunk 0-100 (the 1x forks: +50), 100-200 (the 2x forks: +100), 200-450.
  assert longest[index[("scratch_3x_seed0", 100)]] == 100 + 100 + 250
  assert longest[index[("scratch_3x_seed0", 200)]] == 100 + 250
  assert longest[index[("scratch_1x_seed0", None)]] == 50
  assert longest[index[("scratch_2x_seed2", None)]] == 300
  assert longest[index[("pretrained_2x_seed0", 100)]] == 100 + 200
  # What the study starts first, after the pre-training: the scratch trunks.
  assert max(range(len(segments)), key=lambda j:
             (longest[j], -j)) == index[("scratch_3x_seed0", 100)]


def test_study_schedule_3x_is_the_demo_schedule():
  """The study's reference configuration is the demo's: same schedule, LR, warmup and batch
  (so its seeds are the demo's seeds), and its peer figure is detectron2's eval.json."""
  from rethink_tf import config
  from rethink_tf.training.schedules import nx_schedule
  config.parse_gin(["gin_configs/demo/study.gin"])
  cfg = StudyConfig()
  gin.clear_config()
  config.parse_gin(["gin_configs/demo/shapes_scratch.gin"])
  demo = nx_schedule(global_batch_size=8)
  gin.clear_config()
  study = cfg.schedule(cfg.reference_schedule)
  assert (study.total_steps, study.boundaries, study.warmup_steps) == (800, (622, 741), 100)
  assert study == demo
  d2 = json.load(open(os.path.join(TESTDATA, "d2_ref", "eval.json")))
  assert cfg.reference["box_ap"] == pytest.approx(d2["box_AP"]["AP"] / 100, abs=5e-5)
  assert cfg.reference["mask_ap"] == pytest.approx(d2["mask_AP"]["AP"] / 100, abs=5e-5)
  assert len(cfg.seeds_of("scratch", 3)) >= 3 and len(cfg.seeds) >= 2
  # Scratch goes one schedule beyond the pretrained arm's longest.
  assert cfg.arm_schedules["scratch"][-1] > cfg.arm_schedules["pretrained"][-1]
  assert len(cfg.less_data_num_train) == 2


def test_quick_variant_keeps_the_shape_of_the_study():
  from rethink_tf import config
  config.parse_gin(["gin_configs/demo/study.gin"])
  full = StudyConfig()
  gin.clear_config()
  config.parse_gin(["gin_configs/demo/study.gin", study.QUICK_GIN])
  quick = StudyConfig()
  gin.clear_config()
  # Both arms from 1x, at least three schedules each, scratch one beyond the pretrained arm's
  # longest; the less-data arm at the same sizes; at most a third of the full study's steps.
  for xs in quick.arm_schedules.values():
    assert xs[0] == 1 and len(xs) >= 3
  assert quick.arm_schedules["scratch"][-1] > quick.arm_schedules["pretrained"][-1]
  assert quick.less_data_num_train == full.less_data_num_train
  assert study_plan.training_steps(quick) * 3 <= study_plan.training_steps(full)


def test_plan_rejects_a_decay_within_the_warmup():
  with pytest.raises(ValueError, match="within the 50-step warmup"):
    study_plan.plan(_cfg(steps_per_x=60, eval_every_steps=10))


def _sp(*v):
  return Spread(tuple(v))


def test_reading_states_gaps_with_the_seed_spread_plateau_and_catch_up():
  steps = {1: 150, 2: 300, 3: 450, 4: 600}
  finals = {
      "scratch": {1: _sp(0.20, 0.22), 2: _sp(0.40, 0.42), 3: _sp(0.52, 0.54), 4: _sp(0.55, 0.57)},
      "pretrained": {1: _sp(0.45, 0.47), 2: _sp(0.55, 0.57), 3: _sp(0.56, 0.57)}
  }
  text = " ".join(study_reading.reading(finals, steps, "box AP", 0.01))
  assert ("At 1x (150 iterations) scratch has box AP 0.210 [0.200, 0.220] vs pretrained 0.460 "
          "[0.450, 0.470]: -25.0 points, seed spread 2.0.") in text
  # 2x -> 3x adds 0.5 points: the plateau is 2x (300 iterations).
  assert "The pretrained arm plateaus at 2x (300 iterations)" in text and "3x +0.5" in text
  # Best pretrained: 3x, 0.565 [0.56, 0.57]; scratch 4x 0.56 is 0.5 points below with a
  # spread of 2.0: within. 600 vs 300 iterations of the plateau.
  assert ("Scratch comes within the seed spread of the best pretrained box AP (0.565 [0.560, "
          "0.570] at 3x) at 4x: 0.560 [0.550, 0.570], -0.5 points against a spread of 2.0; "
          "that is 2.0x the iterations of the pretrained arm's plateau (600 vs 300).") in text
  assert "scratch's 1x mean (0.210, 150 iterations) at iteration 150 (0.460): as many" in text
  with_curve = " ".join(
      study_reading.reading(finals, steps, "box AP", 0.01, [(50, 0.1), (100, 0.3), (150, 0.46),
                                                            (300, 0.56)]))
  assert "scratch's 1x mean (0.210, 150 iterations) at iteration 100 (0.300): 1.5x" in with_curve
  # A gap larger than the spread is no catch-up; a pretrained arm still rising has no plateau.
  short = " ".join(
      study_reading.reading(
          {
              "scratch": {1: _sp(0.1, 0.11), 2: _sp(0.3, 0.31)},
              "pretrained": {1: _sp(0.4, 0.41), 2: _sp(0.5, 0.51)}
          }, steps, "mask AP", 0.01))
  assert "The pretrained arm has not stopped improving within 2x: 2x adds +10.0 points" in short
  assert ("Scratch does not come within the seed spread of the best pretrained mask AP (0.505 "
          "[0.500, 0.510] at 2x) within 2x: its best is 0.305 [0.300, 0.310] at 2x, -20.0 "
          "points against a spread of 1.0.") in short
  # One seed: no spread, only an equal or higher AP is "within".
  one = " ".join(
      study_reading.reading({"scratch": {1: _sp(0.499)}, "pretrained": {1: _sp(0.5)}}, steps,
                            "box AP", 0.01))
  assert "does not come within" in one and "0.499 (1 seed)" in one
  past = " ".join(
      study_reading.reading({"scratch": {1: _sp(0.3), 2: _sp(0.6)}, "pretrained": {1: _sp(0.5)}},
                            steps, "box AP", 0.01))
  assert "Scratch overtakes the best pretrained box AP (0.500 (1 seed) at 1x) at 2x" in past
  # Short schedules run with one seed: their gap is stated beside the widest measured spread.
  mixed = " ".join(
      study_reading.reading(
          {
              "scratch": {1: _sp(0.2), 3: _sp(0.50, 0.53)},
              "pretrained": {1: _sp(0.45), 3: _sp(0.56, 0.57)}
          }, steps, "box AP", 0.01))
  assert ("At 1x (150 iterations) scratch has box AP 0.200 (1 seed) vs pretrained 0.450 (1 "
          "seed): -25.0 points, one seed each (the seed spread is at most 3.0 elsewhere).") in mixed
  assert "At 3x (450 iterations) scratch has box AP 0.515 [0.500, 0.530]" in mixed
  assert "No box AP to compare" in study_reading.reading({"scratch": {}, "pretrained": {}}, steps,
                                                         "box AP", 0.01)[0]
  assert study_reading.plateau({1: _sp(0.3), 2: _sp(0.5), 3: _sp(0.505), 4: _sp(0.52)},
                               0.01) is None
  assert study_reading.plateau({1: _sp(0.3), 2: _sp(0.5), 3: _sp(0.505), 4: _sp(0.509)}, 0.01) == 2


def test_last_evaluations_name_the_lr_decays_between_them():
  curve = [(400, 0.30), (800, 0.50), (1200, 0.60), (1600, 0.65), (2000, 0.69), (2133, 0.72)]
  first, constant = study_report._last_evaluations(curve, (1956, 2074))
  assert first == ("On the longest pretrained schedule the last two evaluations (iterations 2000 "
                   "and 2133, mean over seeds) differ by +3.0 points; the LR decay at 2074 lies "
                   "between them.")
  # At constant LR: the last two evaluations before the first decay.
  assert constant == ("On the longest pretrained schedule the last two evaluations at constant "
                      "LR, before its first decay at 1956 (iterations 1200 and 1600, mean over "
                      "seeds) differ by +5.0 points.")
  both = study_report._last_evaluations([(1600, 0.65), (2133, 0.72)], (1956, 2074))
  assert both[0].endswith("the LR decays at 1956 and 2074 lie between them.") and len(both) == 1
  assert study_report._last_evaluations([(400, 0.3)], (1956,)) == []


def test_pretrained_iterations_to_a_scratch_result_read_each_schedule_apart(tmp_path):
  # A fork copies its source's evaluations: at step 200 the 2x run's constant-LR 0.40 and the
  # 1x run's final 0.60 (after its decays) must not be averaged into 0.50.
  cfg = _cfg(pretrained_schedules=(1, 2), seeds=(0,), reference_schedule=None)
  for run, rows in (("pretrained_1x_seed0", [(50, 0.2), (100, 0.35),
                                             (150, 0.60)]), ("pretrained_2x_seed0", [(50, 0.2),
                                                                                     (100, 0.35),
                                                                                     (150, 0.40),
                                                                                     (200, 0.45),
                                                                                     (300, 0.70)])):
    os.makedirs(tmp_path / run)
    with open(tmp_path / run / "eval_metrics.jsonl", "w") as f:
      for step, ap in rows:
        f.write(json.dumps({"step": step, "bbox": {"AP": ap}}) + "\n")
  curve = study_report._first_reached(cfg, str(tmp_path), "bbox")
  assert (150, 0.60) in curve and (150, 0.40) in curve and (150, 0.5) not in curve
  text = study_reading.reading(
      {"scratch": {1: _sp(0.55), 2: _sp(0.65)}, "pretrained": {1: _sp(0.60), 2: _sp(0.70)}},
      {1: 150, 2: 300}, "box AP", 0.01, curve)[-1]
  assert "scratch's 1x mean (0.550, 150 iterations) at iteration 150 (0.600): as many" in text
  assert "scratch's 2x mean (0.650, 300 iterations) at iteration 300 (0.700): as many" in text
  assert study_reading._fewer(300, 150) == "2.0x fewer"
  assert study_reading._fewer(150, 300) == "2.0x more"


def test_less_data_reading_flags_overfitting():
  full = {"scratch": _sp(0.55, 0.57), "pretrained": _sp(0.58, 0.59)}
  text = study_reading.less_data_reading(
      20, 3, {
          "scratch": {"final": _sp(0.10), "best":
              (0.16, 400)}, "pretrained": {"final": _sp(0.30), "best": (0.302, 800)}
      }, full, 0.01)
  assert text.startswith("**20 training images, 3x.** Scratch falls short of pretrained: final "
                         "box AP 0.100 (1 seed) vs 0.300 (1 seed), -20.0 points against a "
                         "spread of 2.0")
  assert "Overfitting: scratch peaks at 0.160 (step 400) and ends at 0.100." in text
  fine = study_reading.less_data_reading(
      200, 3, {
          "scratch": {"final": _sp(0.50), "best":
              (0.50, 800)}, "pretrained": {"final": _sp(0.51), "best": (0.51, 800)}
      }, full, 0.01)
  assert "Scratch comes within the seed spread of pretrained" in fine
  ahead = study_reading.less_data_reading(
      20, 3, {
          "scratch": {"final": _sp(0.30), "best":
              (0.30, 800)}, "pretrained": {"final": _sp(0.20), "best": (0.20, 800)}
      }, full, 0.01)
  assert "Scratch is ahead of pretrained: final box AP 0.300 (1 seed) vs 0.200" in ahead
  assert "No sign of overfitting" in fine


FAKE = r'''
import json, os, signal, sys, time
args = sys.argv[1:]
model_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--model_dir="))
t0 = time.time()
def log(**extra):
  with open({log!r}, "a") as f:
    f.write(json.dumps({{"args": args, "start": t0, "end": time.time(),
                         "threads": os.environ.get("TF_NUM_INTRAOP_THREADS"), **extra}}) + "\n")
os.makedirs(model_dir, exist_ok=True)
if args[1] == "rethink_tf.pretrain":
  signal.signal(signal.SIGTERM, lambda *_: (log(preempted=True), sys.exit(0)))
  time.sleep({sleep!r})
  json.dump({{"images_seen": 640}}, open(os.path.join(model_dir, "backbone.json"), "w"))
  log(); sys.exit(0)
p = dict(a.split("=", 1)[1].split(" = ") for a in args if a.startswith("--gin_param="))
stop = p["TrainConfig.stop_at_step"]
end = {totals!r}[p["nx_schedule.num_x"]] if stop == "None" else int(stop)
state = os.path.join(model_dir, "checkpoint")
start = int(open(state).read().split('"')[1].split("-")[1]) if os.path.exists(state) else 0
def reach(step):
  with open(os.path.join(model_dir, "eval_metrics.jsonl"), "a") as f:
    for s in range(start + 50, step + 1, 50):
      f.write(json.dumps({{"step": s}}) + "\n")
  open(state, "w").write('model_checkpoint_path: "ckpt-%d"\n' % step)
def preempted(*_):  # as the trainer: save at the current step, exit 0
  reach(min(start + 50, end)); log(preempted=True); sys.exit(0)
signal.signal(signal.SIGTERM, preempted)
if {term!r} and {term!r} in model_dir:  # a SIGTERM to the study while this stage runs
  if {term_file!r}:  # the test delivers it
    open({term_file!r}, "w").close()
  else:
    os.kill(os.getppid(), signal.SIGTERM)
  time.sleep(30)
time.sleep({sleep!r})
if {fail!r} and {fail!r} in model_dir:
  print("boom"); log(); sys.exit(3)
if {short!r} and {short!r} in model_dir:
  end = min(start + 50, end)
reach(end)
log()
'''


def _fake_python(tmp_path, fail="", sleep=0.0, short="", term="", term_file=""):
  log = tmp_path / "calls.jsonl"
  script = tmp_path / "fake.py"
  totals = {str(n): _cfg().schedule(n).total_steps for n in (1, 2, 3)}
  script.write_text(
      FAKE.format(totals=totals,
                  log=str(log),
                  fail=fail,
                  sleep=sleep,
                  short=short,
                  term=term,
                  term_file=term_file))
  exe = tmp_path / "python"
  exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
  exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
  return str(exe), log


def _calls(log):
  out = []
  for line in open(log):
    c = json.loads(line)
    args = c["args"]
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
  segments = study_plan.plan(cfg)
  order = [(run, stop) for _, run, stop in train]
  assert sorted(order) == sorted((s.run, str(s.stop_at)) for s in segments)
  # Each after what it continues; the longest chains first (both scratch trunks before
  # anything shorter), the shortest tails last.
  deps = study_plan.dependencies(segments)
  at = {(s.run, str(s.stop_at)): i for i, s in enumerate(segments)}
  for k, (run, stop) in enumerate(order):
    assert all(
        order.index((segments[d].run, str(segments[d].stop_at))) < k
        for d in deps[at[(run, stop)]]
        if d >= 0)
  assert order[:2] == [("scratch_3x_seed0", "100"), ("scratch_3x_seed1", "100")]
  # The less-data arm after every full-data stage.
  first_less = min(k for k, (run, _) in enumerate(order) if "img_" in run)
  assert all("img_" in run for run, _ in order[first_less:])
  assert {run for run, _ in order[first_less - 4:first_less]
         } == {f"{i}_1x_seed{s}" for i in ("scratch", "pretrained") for s in (0, 1)}
  steps = {
      run: [json.loads(line)["step"] for line in open(out / run / "eval_metrics.jsonl")]
      for run in os.listdir(out)
      if (out / run / "eval_metrics.jsonl").exists()
  }
  # A fork carries the longest run's evaluations up to the fork, then its own.
  assert steps["scratch_1x_seed0"] == [50, 100, 150]
  assert steps["pretrained_1x_seed1"] == [50, 100, 150]
  assert steps["scratch_3x_seed1"] == list(range(50, 451, 50))
  assert steps["scratch_2x_seed2"] == list(range(50, 301, 50))
  assert steps["pretrained_2x_20img_seed0"] == list(range(50, 301, 50))
  # Only a fork changes its run's config (the shorter schedule), and says so.
  forks = {s.run for s in study_plan.plan(cfg) if s.fork_from}
  assert forks
  for c in (json.loads(line)["args"] for line in open(log)):
    run = next((a.split("/")[-1] for a in c if a.startswith("--model_dir=")), None)
    assert ("--allow_config_change" in c) == (run in forks), c
  pre = [
      c["args"] for c in map(json.loads, open(log)) if any("pretrained_" in a for a in c["args"])
  ]
  assert all(f"--gin_param=init_config.checkpoint = '{out}/pretrain/backbone'" in c for c in pre)
  times = [json.loads(line) for line in open(out / study.TIMES_FILE)]
  assert [t["stage"] for t in times][:3] == ["pretrain", "scratch_3x_seed0", "scratch_3x_seed1"]
  assert times[-1]["stage"] == "study" and times[-1]["jobs"] == 1
  # One stage at a time: TensorFlow keeps its default threads.
  assert {json.loads(line)["threads"] for line in open(log)} == {None}
  # Everything is complete: a second invocation starts no process.
  n = len(open(log).readlines())
  study.run_study(cfg, str(out), python=exe)
  assert len(open(log).readlines()) == n


def test_two_jobs_run_independent_chains_side_by_side(tmp_path, monkeypatch):
  monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
  cfg = _cfg()
  exe, log = _fake_python(tmp_path, sleep=0.3)
  out = tmp_path / "study"
  study.run_study(cfg, str(out), python=exe, jobs=2)
  calls = [json.loads(line) for line in open(log)]
  segments = study_plan.plan(cfg)
  deps = study_plan.dependencies(segments)
  assert len(calls) == len(segments) + 1
  # Each segment started after the end of every segment it continues (and the pretrained
  # ones after the pre-training).
  span = {}
  for c in calls:
    run = os.path.basename(next(a.split("=", 1)[1] for a in c["args"] if "--model_dir=" in a))
    stop = next((a.split(" = ")[1] for a in c["args"] if "stop_at_step" in a), "None")
    span[(run, stop)] = (c["start"], c["end"])
  key = lambda seg: (seg.run, str(seg.stop_at))  # noqa: E731
  for i, seg in enumerate(segments):
    for d in deps[i]:
      before = ("pretrain", "None") if d == -1 else key(segments[d])
      assert span[before][1] <= span[key(seg)][0], (seg, before)
  # At some moment two stages ran at once, each with one of the two cores' threads.
  starts = sorted(s for s, _ in span.values())
  assert any(sum(s <= t < e for s, e in span.values()) == 2 for t in starts)
  assert {c["threads"] for c in calls} == {str(max(1, (os.cpu_count() or 1) // 2))}
  # The same results as one at a time.
  assert (out / "scratch_1x_seed0" / "eval_metrics.jsonl").read_text().count("step") == 3
  assert (out / "pretrained_2x_seed1" / "checkpoint").read_text() == \
      'model_checkpoint_path: "ckpt-300"\n'


def test_sigterm_stops_the_running_stages_at_a_checkpoint_and_the_study_resumes(tmp_path):
  cfg = _cfg()
  exe, log = _fake_python(tmp_path, sleep=0.2, term="scratch_3x_seed1")
  out = tmp_path / "study"
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(study.StudyStopped, match="run the same command to resume"):
    study.run_study(cfg, str(out), python=exe, jobs=2)
  calls = [json.loads(line) for line in open(log)]
  # The stage that was running saved its step and stopped; nothing started after the signal.
  stopped = [c for c in calls if c.get("preempted")]
  assert stopped and any("scratch_3x_seed1" in a for c in stopped for a in c["args"])
  assert (out / "scratch_3x_seed1" /
          "checkpoint").read_text() == ('model_checkpoint_path: "ckpt-50"\n')
  times = [json.loads(line) for line in open(out / study.TIMES_FILE)]
  assert times[-1]["stage"] == "study"
  assert "scratch_3x_seed1" not in {t["stage"] for t in times}  # not recorded as complete
  assert signal.getsignal(signal.SIGTERM) is handler  # the study's handler is gone
  # Run again (without the signal): everything completes from where it stopped.
  exe, log = _fake_python(tmp_path, sleep=0.0)
  study.run_study(cfg, str(out), python=exe, jobs=2)
  for seg in study_plan.plan(cfg):
    total = cfg.schedule(seg.num_x).total_steps
    assert (out / seg.run /
            "checkpoint").read_text() == (f'model_checkpoint_path: "ckpt-{total}"\n'), seg.run
  evals = [
      json.loads(line)["step"] for line in open(out / "scratch_3x_seed1" / "eval_metrics.jsonl")
  ]
  assert evals == list(range(50, 451, 50))


def test_a_sigterm_that_lands_on_a_worker_thread_still_stops_the_study(tmp_path):
  # The kernel may hand a process-directed signal to any thread; here it lands on a thread that
  # is not the main one, whose handler must still run while the stage is going (the stage
  # waits 30 s for it, then would run on to its end).
  cfg = _cfg()
  flag = tmp_path / "stage_started"
  exe, log = _fake_python(tmp_path, sleep=0.2, term="scratch_3x_seed1", term_file=str(flag))

  def deliver():
    while not flag.exists():
      time.sleep(0.02)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

  threading.Thread(target=deliver, daemon=True).start()
  with pytest.raises(study.StudyStopped, match="run the same command to resume"):
    study.run_study(cfg, str(tmp_path / "study"), python=exe, jobs=2)
  assert (tmp_path / "study" / "scratch_3x_seed1" /
          "checkpoint").read_text() == ('model_checkpoint_path: "ckpt-50"\n')
  assert any(c.get("preempted") for c in map(json.loads, open(log)))


def test_dry_run_lists_the_stages_and_what_is_on_disk(tmp_path):
  cfg = _cfg()
  out = tmp_path / "study"
  text = study.describe_plan(cfg, str(out))
  segments = study_plan.plan(cfg)
  lines = text.splitlines()
  assert lines[0] == "pre-training: gin_configs/demo/pretrain.gin"
  assert lines[1] == "  1. scratch_3x_seed0 to step 100: 100 steps"
  assert lines[
      2] == "  2. scratch_1x_seed0 to the end: 50 steps, copied from scratch_3x_seed0, after 1"
  assert any(
      line.endswith("after pre-training") and "pretrained_2x_seed0 to step 100" in line
      for line in lines)
  assert lines[-1] == (f"{len(segments)} detection stages, {study_plan.training_steps(cfg)} "
                       f"steps, {study_plan.training_steps(cfg)} still to run; the pre-training "
                       "still to run")
  exe, _ = _fake_python(tmp_path, short="scratch_3x_seed0")
  with pytest.raises(study.StudyError):
    study.run_study(cfg, str(out), python=exe)
  lines = study.describe_plan(cfg, str(out)).splitlines()
  assert lines[0].endswith("(complete)") and lines[1].endswith("(50 to run)")


def test_a_segment_that_exits_short_of_its_step_is_a_failure(tmp_path):
  exe, _ = _fake_python(tmp_path, short="scratch_3x_seed0")
  out = tmp_path / "study"
  with pytest.raises(study.StudyError,
                     match=r"segment scratch_3x_seed0 exited at step 50, not 100; log: "):
    study.run_study(_cfg(), str(out), python=exe)
  assert not (out / "scratch_1x_seed0").exists()  # its fork did not copy a short run


def test_study_failure_names_the_stage_and_its_log(tmp_path):
  exe, _ = _fake_python(tmp_path, fail="pretrained_2x_seed0")
  out = tmp_path / "study"
  with pytest.raises(study.StudyError,
                     match=r"segment pretrained_2x_seed0 failed \(exit 3\); log: " +
                     str(out / "logs" / "pretrained_2x_seed0.log")) as e:
    study.run_study(_cfg(), str(out), python=exe)
  assert "boom" in str(e.value)
  # What finished before the failure is kept (every recorded stage's checkpoint), and nothing
  # started after it.
  times = [json.loads(line) for line in open(out / study.TIMES_FILE)]
  assert times[-1]["stage"] == "study" and len(times) > 3
  reached = {}  # run -> the step its last recorded stage ended at
  for t in times[1:-1]:
    reached[t["stage"]] = t["stop_at"] or _cfg().schedule(int(
        t["stage"].split("_")[1][:-1])).total_steps
  for run, step in reached.items():
    assert (out / run /
            "checkpoint").read_text().startswith(f'model_checkpoint_path: "ckpt-{step}"'), run
  assert "pretrained_2x_seed0" not in {t["stage"] for t in times}


def test_report_from_two_tiny_runs(tiny_reference_run, tiny_pretrained_run, tmp_path):
  """A 1x study whose runs are the tiny scratch and pretrained runs (20 steps at batch 2), the
  same runs standing in for its less-data arm, with a reference row."""
  ref_dir, r = tiny_reference_run
  pre_dir, pre_run, p, t = tiny_pretrained_run
  assert r.returncode == 0 and p.returncode == 0 and t.returncode == 0
  out = tmp_path / "study"
  out.mkdir()
  for name, d in (("scratch_1x_seed0", ref_dir), ("pretrained_1x_seed0", pre_run),
                  ("scratch_1x_20img_seed0", ref_dir), ("pretrained_1x_20img_seed0",
                                                        pre_run), ("pretrain", pre_dir)):
    os.symlink(d, out / name)
  (out / study.TIMES_FILE).write_text(
      json.dumps({"stage": "pretrain", "seconds": 60}) + "\n" +
      json.dumps({"stage": "study", "jobs": 2, "seconds": 90}) + "\n")
  cfg = StudyConfig(pretrained_schedules=(1,),
                    scratch_schedules=(1,),
                    steps_per_x=20,
                    global_batch_size=2,
                    warmup_steps=5,
                    eval_every_steps=10,
                    seeds=(0,),
                    reference_schedule=1,
                    reference_seeds=(0,),
                    reference={"label": "peer", "box_ap": 0.5, "mask_ap": 0.4},
                    less_data_num_train=(20,),
                    less_data_schedules=(1,))
  assert cfg.schedule(1).total_steps == 20
  report = open(study_report.write_report(cfg, str(out))).read()
  final = {
      name: json.loads(open(d / "eval_metrics.jsonl").readlines()[-1])
      for name, d in (("scratch", ref_dir), ("pretrained", pre_run))
  }
  box = {k: final[k]["bbox"]["AP"] for k in final}
  mask = {k: final[k]["segm"]["AP"] for k in final}
  row = (f"| 1x | 20 | 1 / 1 | {box['scratch']:.3f} (1 seed) | {box['pretrained']:.3f} (1 seed) "
         f"| {(box['scratch'] - box['pretrained']) * 100:+.1f} (1 seed) | {mask['scratch']:.3f} (1 "
         f"seed) | {mask['pretrained']:.3f} (1 seed) | "
         f"{(mask['scratch'] - mask['pretrained']) * 100:+.1f} (1 seed) |")
  assert row in report
  assert "480 images seen" in report and "At 1x (20 iterations) scratch has box AP" in report
  assert "| peer | 1 | 0.500 | 0.400 |" in report
  assert f"| rethink_tf, seed 0 | 1 | {box['scratch']:.3f} | {mask['scratch']:.3f} |" in report
  assert "**20 training images, 1x.** Scratch" in report
  best = max(json.loads(line)["bbox"]["AP"] for line in open(ref_dir / "eval_metrics.jsonl"))
  assert f"| 20 | 1x | scratch | 1 | {box['scratch']:.3f} (1 seed) | {best:.3f}" in report
  for name in ("final_ap_by_schedule", "curves_iterations", "curves_images_incl_pretraining",
               "curves_all_schedules", "curves_less_data"):
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"({name}.png)" in report
  assert "Wall time of the study: **1.5 min**" in report and "stages run 2 at a time" in report
