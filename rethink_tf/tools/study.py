r"""The paper in miniature, on the embedded data: pre-train, fine-tune, train from scratch, compare.

  python -m rethink_tf.tools.study --gin_file=gin_configs/demo/study.gin --output_dir=/tmp/study

Runs, each as its own process (the commands a user would type):
  1. `rethink_tf.pretrain`: the backbone as a classifier on the synthetic classification set
     (the stand-in for ImageNet), into OUTPUT_DIR/pretrain;
  2. `rethink_tf.train` from that checkpoint (init `pretrained`) and from random init (init
     `scratch`), at each schedule length of `StudyConfig.schedules`, evaluated periodically;
     shorter schedules fork off the longest one before their first LR decay
     (training/study_plan.py);
  3. the less-data arm: both inits on `StudyConfig.less_data_num_train` training images;
then writes OUTPUT_DIR/report.md with the figures (AP against iterations with LR drops, AP
against images seen including pre-training, final AP against schedule length, the less-data
curves), the tables, the measured times, and a reading of the numbers: whether and where
scratch caught up with pretrained, and how many more iterations it needed.

Every stage resumes: running the same command again skips what is complete and continues a
killed run from its last checkpoint. `--report_only` rewrites the report from the runs on disk.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from typing import List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from rethink_tf.tools.study_report import TIMES_FILE, write_report  # noqa: E402
from rethink_tf.training import study_plan  # noqa: E402
from rethink_tf.training.study_plan import Segment, StudyConfig  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyError(RuntimeError):
  """A stage failed; names the stage, its command and its log."""


def _run(cmd: List[str], log_path: str, what: str):
  with open(log_path, "a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    r = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  if r.returncode:
    tail = open(log_path).read()[-2000:]
    raise StudyError(f"{what} failed (exit {r.returncode}); log: {log_path}\n"
                     f"command: {' '.join(cmd)}\n...{tail}")


def _record(output_dir: str, **entry):
  with open(os.path.join(output_dir, TIMES_FILE), "a") as f:
    f.write(json.dumps(entry) + "\n")


def _steps(cfg: StudyConfig, seg: Segment, start: int) -> int:
  end = seg.stop_at or cfg.schedule(seg.num_x).total_steps
  return max(end - start, 0)


def _checkpoint_step(model_dir: str) -> int:
  """Step of the latest checkpoint in `model_dir` (0 when there is none), without TF."""
  state = os.path.join(model_dir, "checkpoint")
  if not os.path.exists(state):
    return 0
  for line in open(state):
    if line.startswith("model_checkpoint_path:"):
      return int(line.split('"')[1].rsplit("-", 1)[1])
  return 0


def run_study(cfg: StudyConfig, output_dir: str, python: str = sys.executable):
  """Runs every stage not yet complete; records wall times in OUTPUT_DIR/study_times.jsonl."""
  os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
  segments = study_plan.plan(cfg)
  pre_dir = os.path.join(output_dir, "pretrain")
  checkpoint = os.path.join(pre_dir, "backbone")
  t_study = time.time()
  if not os.path.exists(checkpoint + ".json"):
    print(f"[pretrain] {python} -m rethink_tf.pretrain -> {pre_dir}", flush=True)
    t = time.time()
    _run([python, "-m", "rethink_tf.pretrain", f"--model_dir={pre_dir}"] +
         [f"--gin_file={f}" for f in cfg.pretrain_gin_files],
         os.path.join(output_dir, "logs", "pretrain.log"), "pre-training")
    _record(output_dir, stage="pretrain", seconds=time.time() - t)
  # Training steps still to run, for the study's ETA.
  remaining, position = [], {}
  for seg in segments:
    start = position.get(seg.run, _checkpoint_step(os.path.join(output_dir, seg.run)))
    if seg.fork_from and not os.path.exists(os.path.join(output_dir, seg.run)):
      start = position[seg.fork_from]
    remaining.append(_steps(cfg, seg, start))
    position[seg.run] = max(start, seg.stop_at or cfg.schedule(seg.num_x).total_steps)
  done_steps, t_train = 0, time.time()
  for i, seg in enumerate(segments):
    model_dir = os.path.join(output_dir, seg.run)
    if seg.fork_from and not os.path.exists(model_dir):
      # The shorter schedule continues from the longest run's checkpoint before its decay
      # (a copy cut short by a kill is redone).
      shutil.rmtree(model_dir + ".tmp", ignore_errors=True)
      shutil.copytree(os.path.join(output_dir, seg.fork_from), model_dir + ".tmp")
      os.replace(model_dir + ".tmp", model_dir)
    steps = remaining[i]
    if not steps:
      continue
    rate = (time.time() - t_train) / done_steps if done_steps else None
    eta = f", study ETA {sum(remaining[i:]) * rate / 60:.0f} min" if rate else ""
    target = f"step {seg.stop_at}" if seg.stop_at else "the end"
    print(f"[{i + 1}/{len(segments)}] {seg.run} to {target} ({steps} steps){eta}", flush=True)
    cmd = [python, "-m", "rethink_tf.train", f"--model_dir={model_dir}"]
    cmd += [
        f"--gin_file={f}" for f in (*cfg.detection_gin_files, study_plan.init_gin_file(seg.init))
    ]
    cmd += [f"--gin_param={p}" for p in study_plan.gin_params(cfg, seg, checkpoint)]
    if seg.fork_from:  # the fork continues the longer run's prefix with its own schedule
      cmd.append("--allow_config_change")
    t = time.time()
    _run(cmd, os.path.join(output_dir, "logs", f"{seg.run}.log"), f"segment {seg.run}")
    _record(output_dir, stage=seg.run, stop_at=seg.stop_at, steps=steps, seconds=time.time() - t)
    done_steps += steps
  print(f"study runs complete ({(time.time() - t_study) / 60:.1f} min this invocation)", flush=True)


# ------------------------------------------------------------------------------------------
# The report.

FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from rethink_tf import config
  config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  cfg = StudyConfig()
  try:
    study_plan.validate(cfg)
    if not FLAGS.report_only:
      run_study(cfg, FLAGS.output_dir)
  except (StudyError, ValueError) as e:
    sys.exit(f"study: {e}")
  print(f"wrote {write_report(cfg, FLAGS.output_dir, FLAGS.gin_file)}", flush=True)


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-study`)."""
  flags.DEFINE_multi_string("gin_file", ["gin_configs/demo/study.gin"], "Study gin files.")
  flags.DEFINE_multi_string("gin_param", [], "Extra bindings, e.g. StudyConfig.schedules=(1,2).")
  flags.DEFINE_string("output_dir", None, "Where the runs and the report go.", required=True)
  flags.DEFINE_bool("report_only", False, "Only rewrite the report from the runs on disk.")
  app.run(main)


if __name__ == "__main__":
  console_main()
