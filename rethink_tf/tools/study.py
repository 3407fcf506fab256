r"""The paper in miniature, on the embedded data: pre-train, fine-tune, train from scratch, compare.

  python -m rethink_tf.tools.study --gin_file=gin_configs/demo/study.gin --output_dir=/tmp/study
  python -m rethink_tf.tools.study --quick --output_dir=/tmp/study_quick   # the short variant

Runs, each as its own process (the commands a user would type), two at a time by default
(`--jobs`):
  1. `rethink_tf.pretrain`: the backbone as a classifier on the synthetic classification set
     (the stand-in for ImageNet), into OUTPUT_DIR/pretrain;
  2. `rethink_tf.train` from that checkpoint (init `pretrained`) and from random init (init
     `scratch`), at each schedule length of its arm, for each seed, evaluated periodically;
     shorter schedules fork off the longest one before their first LR decay
     (training/study_plan.py); the scratch arm also runs the reference (demo) configuration
     with more seeds;
  3. the less-data arm: both inits on each of `StudyConfig.less_data_num_train` training-set
     sizes;
then writes OUTPUT_DIR/report.md (tools/study_report.py): AP by schedule as mean and spread
over seeds, the pretrained arm's plateau, whether and where scratch came within the seed
spread, the less-data table with its overfitting check, the reference row, the figures and the
measured times.

Every stage resumes: running the same command again skips what is complete and continues a
killed run from its last checkpoint. A SIGTERM to the study (a preemption, `kill`) reaches its
running stages, which save a checkpoint at their current step and stop; the study records its
wall time and exits with status 143. `--report_only` rewrites the report from the runs on disk.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from rethink_tf import console  # noqa: E402
from rethink_tf.tools.study_report import TIMES_FILE, write_report  # noqa: E402
from rethink_tf.training import study_plan  # noqa: E402
from rethink_tf.training.study_plan import Segment, StudyConfig  # noqa: E402

QUICK_GIN = "gin_configs/demo/study_quick.gin"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyError(RuntimeError):
  """A stage failed; names the stage, its command and its log."""


class StudyStopped(RuntimeError):
  """SIGTERM stopped the study: its running stages saved a checkpoint and stopped."""


class _Children:
  """The running stage processes, so that a SIGTERM to the study reaches them: each saves a
  checkpoint and stops (the trainer's preemption path) instead of running on unattended."""

  def __init__(self):
    self.lock, self.procs, self.stopping = threading.Lock(), set(), threading.Event()

  def run(self, cmd: List[str], log, env) -> int:
    with self.lock:
      if self.stopping.is_set():
        raise StudyStopped()
      proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
      self.procs.add(proc)
    try:
      return proc.wait()
    finally:
      with self.lock:
        self.procs.discard(proc)

  def stop(self, signum=None, frame=None):
    del signum, frame
    with self.lock:
      self.stopping.set()
      for proc in self.procs:
        proc.send_signal(signal.SIGTERM)


_CHILDREN = _Children()


def _run(cmd: List[str], log_path: str, what: str, env: Optional[Dict[str, str]] = None):
  with open(log_path, "a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    returncode = _CHILDREN.run(cmd, log, env)
  if _CHILDREN.stopping.is_set():
    raise StudyStopped()
  if returncode:
    tail = open(log_path).read()[-2000:]
    raise StudyError(f"{what} failed (exit {returncode}); log: {log_path}\n"
                     f"command: {' '.join(cmd)}\n...{tail}")


_RECORD_LOCK = threading.Lock()


def _record(output_dir: str, **entry):
  with _RECORD_LOCK, open(os.path.join(output_dir, TIMES_FILE), "a") as f:
    f.write(json.dumps(entry) + "\n")


def _steps(cfg: StudyConfig, seg: Segment, start: int) -> int:
  end = seg.stop_at or cfg.schedule(seg.num_x).total_steps
  return max(end - start, 0)


def _remaining_steps(cfg: StudyConfig, segments, output_dir: str) -> List[int]:
  """Steps each segment still has to run given the checkpoints in `output_dir` (0: complete)."""
  remaining, position = [], {}
  for seg in segments:
    start = position.get(seg.run, _checkpoint_step(os.path.join(output_dir, seg.run)))
    if seg.fork_from and not os.path.exists(os.path.join(output_dir, seg.run)):
      start = position[seg.fork_from]
    remaining.append(_steps(cfg, seg, start))
    position[seg.run] = max(start, seg.stop_at or cfg.schedule(seg.num_x).total_steps)
  return remaining


def describe_plan(cfg: StudyConfig, output_dir: str) -> str:
  """The stages and their steps, what each waits for, and what `output_dir` already holds."""
  segments = study_plan.plan(cfg)
  deps = study_plan.dependencies(segments)
  steps = study_plan.segment_steps(cfg, segments)
  remaining = _remaining_steps(cfg, segments, output_dir)
  pre_done = os.path.exists(os.path.join(output_dir, "pretrain", "backbone.json"))
  lines = [
      f"pre-training: {', '.join(cfg.pretrain_gin_files)}"
      f"{' '.join([''] + list(cfg.pretrain_params))}{' (complete)' if pre_done else ''}"
  ]
  for i, seg in enumerate(segments):
    target = f"step {seg.stop_at}" if seg.stop_at else "the end"
    after = [("pre-training" if d < 0 else f"{d + 1}") for d in deps[i]]
    state = ("complete"
             if not remaining[i] else f"{remaining[i]} to run" if remaining[i] < steps[i] else "")
    lines.append(f"{i + 1:>3}. {seg.run} to {target}: {steps[i]} steps" +
                 (f", copied from {seg.fork_from}" if seg.fork_from else "") +
                 (f", after {', '.join(after)}" if after else "") +
                 (f" ({state})" if state else ""))
  lines.append(f"{len(segments)} detection stages, {sum(steps)} steps, {sum(remaining)} still to "
               f"run; the pre-training {'is complete' if pre_done else 'still to run'}")
  return "\n".join(lines)


def _checkpoint_step(model_dir: str) -> int:
  """Step of the latest checkpoint in `model_dir` (0 when there is none), without TF."""
  state = os.path.join(model_dir, "checkpoint")
  if not os.path.exists(state):
    return 0
  for line in open(state):
    if line.startswith("model_checkpoint_path:"):
      return int(line.split('"')[1].rsplit("-", 1)[1])
  return 0


def _child_env(jobs: int) -> Dict[str, str]:
  """The environment of a stage: with several stages side by side, each gets its share of the
  cores as TensorFlow's op threads (measured on 2 cores: two single-threaded runs train 2.06
  steps/s together against 1.8 for one run on both cores, and overlap their start-up)."""
  env = dict(os.environ)
  if jobs > 1:
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
    env.setdefault("TF_NUM_INTEROP_THREADS", threads)
  return env


def _segment_command(cfg: StudyConfig, seg: Segment, model_dir: str, checkpoint: str,
                     python: str) -> List[str]:
  cmd = [python, "-m", "rethink_tf.train", f"--model_dir={model_dir}"]
  cmd += [f"--gin_file={f}" for f in (*cfg.detection_gin_files, study_plan.init_gin_file(seg.init))]
  cmd += [f"--gin_param={p}" for p in study_plan.gin_params(cfg, seg, checkpoint)]
  if seg.fork_from:  # the fork continues the longer run's prefix with its own schedule
    cmd.append("--allow_config_change")
  return cmd


def run_study(cfg: StudyConfig, output_dir: str, python: str = sys.executable, jobs: int = 1):
  """Runs every stage not yet complete, up to `jobs` of them at once (a stage starts once the
  stages it continues from are complete); records wall times in OUTPUT_DIR/study_times.jsonl.
  The first failure stops new stages, lets the running ones finish, and is raised."""
  os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
  segments = study_plan.plan(cfg)
  deps = study_plan.dependencies(segments)
  pre_dir = os.path.join(output_dir, "pretrain")
  checkpoint = os.path.join(pre_dir, "backbone")
  env = _child_env(jobs)
  t_study = time.time()
  remaining = _remaining_steps(cfg, segments, output_dir)
  done = {i for i, steps in enumerate(remaining) if not steps}
  # Among the ready stages: the pre-training first (half the plan waits for it), then the
  # full-data ones before the less-data arm (whose schedule is read off the full-data plateau:
  # a study stopped before it can still change it), then the one that starts the longest
  # chain of remaining steps.
  chains = study_plan.chain_steps(remaining, deps)
  priority = [(seg.num_train is None, chains[i], -i) for i, seg in enumerate(segments)]
  if os.path.exists(checkpoint + ".json"):
    done.add(-1)
  started, failures, lock = set(), [], threading.Condition()
  progress = {"steps": 0, "seconds": 0.0}  # of the segments completed by this invocation

  def run_pretrain():
    logging.info(f"[pretrain] {python} -m rethink_tf.pretrain -> {pre_dir}")
    t = time.time()
    _run([python, "-m", "rethink_tf.pretrain", f"--model_dir={pre_dir}"] +
         [f"--gin_file={f}" for f in cfg.pretrain_gin_files] +
         [f"--gin_param={p}" for p in cfg.pretrain_params],
         os.path.join(output_dir, "logs", "pretrain.log"), "pre-training", env)
    if not os.path.exists(checkpoint + ".json"):
      raise StudyError(f"pre-training exited without writing {checkpoint}; log: "
                       f"{os.path.join(output_dir, 'logs', 'pretrain.log')}")
    _record(output_dir, stage="pretrain", seconds=time.time() - t)

  def run_segment(i):
    seg = segments[i]
    model_dir = os.path.join(output_dir, seg.run)
    with lock:
      # Seconds per step of one stage (evaluations and start-up included), `jobs` at a time;
      # the pre-training's remaining time is not counted.
      rate = progress["seconds"] / progress["steps"] if progress["steps"] else None
      left = sum(remaining[j] for j in range(len(segments)) if j not in done)
    eta = f", study ETA {left * rate / max(1, jobs) / 60:.0f} min" if rate else ""
    target = f"step {seg.stop_at}" if seg.stop_at else "the end"
    logging.info(f"[{i + 1}/{len(segments)}] {seg.run} to {target} ({remaining[i]} steps){eta}")
    t = time.time()
    log_path = os.path.join(output_dir, "logs", f"{seg.run}.log")
    _run(_segment_command(cfg, seg, model_dir, checkpoint, python), log_path, f"segment {seg.run}",
         env)
    target = seg.stop_at or cfg.schedule(seg.num_x).total_steps
    reached = _checkpoint_step(model_dir)
    if reached != target:  # e.g. preempted by someone else: it exits 0 after its save
      raise StudyError(f"segment {seg.run} exited at step {reached}, not {target}; log: "
                       f"{log_path} (run the study again to resume it)")
    _record(output_dir,
            stage=seg.run,
            stop_at=seg.stop_at,
            steps=remaining[i],
            seconds=time.time() - t)
    with lock:
      progress["steps"] += remaining[i]
      progress["seconds"] += time.time() - t

  def fork(i):
    """Copies the source run into each fork of segment i's stop (before the run moves on; a
    copy cut short by a kill is redone)."""
    seg = segments[i]
    for j, other in enumerate(segments):
      target = os.path.join(output_dir, other.run)
      if other.fork_from == seg.run and deps[j][0] == i and not os.path.exists(target):
        shutil.rmtree(target + ".tmp", ignore_errors=True)
        shutil.copytree(os.path.join(output_dir, seg.run), target + ".tmp")
        os.replace(target + ".tmp", target)

  def worker():
    while True:
      with lock:
        while True:
          if failures or _CHILDREN.stopping.is_set():
            return
          todo = [i for i in [-1] + list(range(len(segments))) if i not in done | started]
          if not todo:
            return
          ready = [i for i in todo if i == -1 or all(d in done for d in deps[i])]
          if ready:
            i = -1 if -1 in ready else max(ready, key=lambda j: priority[j])
            started.add(i)
            break
          lock.wait()
      try:
        if i == -1:
          run_pretrain()
        else:
          run_segment(i)
          fork(i)
      except StudyStopped:
        with lock:
          lock.notify_all()
        return
      except (StudyError, OSError) as e:
        with lock:
          failures.append(e)
          lock.notify_all()
        return
      with lock:
        done.add(i)
        lock.notify_all()

  for i in sorted(done - {-1}):  # forks of segments completed by an earlier invocation
    fork(i)
  _CHILDREN.stopping.clear()
  in_main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _CHILDREN.stop) if in_main else None
  threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, jobs))]
  try:
    for th in threads:
      th.start()
    for th in threads:
      # A process-directed SIGTERM may land on any thread, and a main thread blocked in a
      # plain join() would not run the handler until that thread ends: wake it to look.
      while th.is_alive():
        th.join(timeout=0.2)
  finally:
    if in_main:
      signal.signal(signal.SIGTERM, previous)
    _record(output_dir, stage="study", jobs=jobs, seconds=time.time() - t_study)
  if failures:
    raise failures[0]
  if _CHILDREN.stopping.is_set():
    raise StudyStopped(f"stopped by SIGTERM after {(time.time() - t_study) / 60:.1f} min; the "
                       "running stages saved a checkpoint: run the same command to resume")
  logging.info(f"study runs complete ({(time.time() - t_study) / 60:.1f} min this invocation)")


# ------------------------------------------------------------------------------------------
# The report.

FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  from rethink_tf import config
  gin_files = list(FLAGS.gin_file) + ([QUICK_GIN] if FLAGS.quick else [])
  config.parse_gin(gin_files, FLAGS.gin_param)
  cfg = StudyConfig()
  try:
    study_plan.validate(cfg)
    if FLAGS.dry_run:
      print(describe_plan(cfg, FLAGS.output_dir))
      return
    if not FLAGS.report_only:
      run_study(cfg, FLAGS.output_dir, jobs=FLAGS.jobs)
  except StudyStopped as e:
    print(f"study: {e}", file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGTERM)
  except (StudyError, ValueError) as e:
    sys.exit(f"study: {e}")
  command = " ".join([f"--gin_file={f}" for f in FLAGS.gin_file] +
                     (["--quick"] if FLAGS.quick else []))
  print(f"wrote {write_report(cfg, FLAGS.output_dir, command)}", flush=True)


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-study`)."""
  flags.DEFINE_multi_string("gin_file", ["gin_configs/demo/study.gin"], "Study gin files.")
  flags.DEFINE_multi_string("gin_param", [], "Extra bindings, e.g. StudyConfig.schedules=(1,2).")
  flags.DEFINE_string("output_dir", None, "Where the runs and the report go.", required=True)
  flags.DEFINE_bool("report_only", False, "Only rewrite the report from the runs on disk.")
  flags.DEFINE_bool(
      "dry_run", False, "Print the stages, their steps and what OUTPUT_DIR already "
      "holds; run nothing.")
  flags.DEFINE_bool("quick", False, f"The short variant: adds {QUICK_GIN} after the gin files.")
  flags.DEFINE_integer("jobs", 2, "Stages run side by side (each with its share of the cores).")
  app.run(main)


if __name__ == "__main__":
  console_main()
