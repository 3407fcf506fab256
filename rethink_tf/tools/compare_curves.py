r"""Compares runs the way the paper's figures do: AP against iterations (or images seen).

  python -m rethink_tf.tools.compare_curves --run scratch=runs/a --run pretrained=runs/b \
      [--metric=bbox/AP --metric=segm/AP] [--x=iterations|images|images_incl_pretraining] \
      --output=FIG.png [--table=TABLE.md] [--csv=CURVES.csv]

Reads each run's TensorBoard event files (`MODEL_DIR/eval` for metrics) and its schedule
(`MODEL_DIR/schedule.json`, else the logged learning rate in `MODEL_DIR/train`), plots one panel
per metric with a curve per run, marks the learning-rate drops and annotates the final values,
and writes a table of final and best values per run. The global batch comes from the run's
operative gin config; the images-incl-pretraining axis adds the images the backbone saw before
fine-tuning, from the pretrained checkpoint's metadata (`images_seen` in its `.json`), as the
paper's Fig. 2 does.
"""

import csv
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

from rethink_tf import console  # noqa: E402

X_AXES = ("iterations", "images", "images_incl_pretraining")


class CurveError(ValueError):
  """A run or metric that cannot be plotted, with what to do about it."""


def read_scalars(logdir: str) -> Dict[str, List[Tuple[int, float]]]:
  """{tag: [(step, value), ...] sorted by step} of TF2 scalar summaries under `logdir` (other
  summaries, such as images, are left out)."""
  if not tf.io.gfile.isdir(logdir):
    return {}
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags().get("tensors", []):
    events = acc.Tensors(tag)
    if not events or events[0].tensor_proto.tensor_shape.dim:  # images etc., not scalars
      continue
    out[tag] = sorted({e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events}.items())
  for tag in acc.Tags().get("scalars", []):
    out.setdefault(tag, sorted({e.step: float(e.value) for e in acc.Scalars(tag)}.items()))
  return out


def read_images(logdir: str, tag: str):
  """[(step, [uint8 [H, W, 3] images])] of a `tf.summary.image` tag."""
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  out = []
  for e in acc.Tensors(tag):
    encoded = tf.make_ndarray(e.tensor_proto)[2:]  # width, height, then the PNGs
    out.append((e.step, [tf.io.decode_png(b).numpy() for b in encoded]))
  return out


def _gin_value(model_dir: str, binding: str) -> Optional[str]:
  for name in ("operative_config.gin", "config.gin"):
    path = os.path.join(model_dir, name)
    if os.path.exists(path):
      text = re.sub(r"\\\n\s*", "", open(path).read())  # gin wraps long values with "\"
      m = re.search(rf"^{re.escape(binding)}\s*=\s*(.+)$", text, flags=re.M)
      if m:
        return m.group(1).strip()
  return None


def global_batch(model_dir: str) -> int:
  value = _gin_value(model_dir, "TrainConfig.global_batch_size")
  if value is None:
    raise CurveError(f"{model_dir}: no TrainConfig.global_batch_size in operative_config.gin or "
                     "config.gin; the images axis needs it (use --x=iterations)")
  return int(value)


def pretraining_images(model_dir: str) -> int:
  """Images seen in pre-training: 0 for scratch runs, else `images_seen` of the checkpoint's
  metadata file (PREFIX.json)."""
  mode = (_gin_value(model_dir, "init_config.mode") or "'scratch'").strip("'\"")
  if mode == "scratch":
    return 0
  ckpt = (_gin_value(model_dir, "init_config.checkpoint") or "None").strip("'\"")
  meta = ckpt + ".json"
  if ckpt == "None" or not os.path.exists(meta):
    raise CurveError(f"{model_dir}: pretrained run, but its checkpoint metadata {meta} is "
                     "missing; --x=images_incl_pretraining needs `images_seen` from it")
  seen = json.load(open(meta)).get("images_seen")
  if seen is None:
    raise CurveError(f"{meta} has no `images_seen` (weights converted from elsewhere: add the "
                     "pre-training's image count to it, e.g. 1.28M x epochs for ImageNet)")
  return int(seen)


def _schedule_from_config(model_dir: str) -> Optional[List[int]]:
  """The decays of the run's own saved gin config (`config.gin`), for runs written before the
  trainer wrote `schedule.json`; None when it cannot be read."""
  import gin

  from rethink_tf import config
  from rethink_tf.training.schedules import nx_schedule
  from rethink_tf.training.train_config import TrainConfig
  path = os.path.join(model_dir, "config.gin")
  if not os.path.exists(path):
    return None
  try:
    with gin.unlock_config():
      config.parse_gin([path], finalize=False)
      return list(nx_schedule(global_batch_size=TrainConfig().global_batch_size).boundaries)
  except Exception as e:  # an unreadable config only costs the exact decay markers
    logging.warning("%s: cannot derive the schedule (%s); using the logged LR", path, e)
    return None
  finally:
    gin.clear_config()


def lr_drops(model_dir: str, train_scalars) -> List[int]:
  """Steps where the learning rate falls: the schedule's decays from `schedule.json` (written by
  the trainer) or from the run's `config.gin`, else the first logged step with a lower
  `learning_rate` than the one before."""
  path = os.path.join(model_dir, "schedule.json")
  if os.path.exists(path):
    return [int(b) for b in json.load(open(path))["boundaries"]]
  from_config = _schedule_from_config(model_dir)
  if from_config is not None:
    return from_config
  points = train_scalars.get("learning_rate", [])
  return [s for (_, a), (s, b) in zip(points, points[1:]) if b < a * 0.999]


class Run:
  """One run's curves: name, metrics {tag: [(step, value)]}, LR drop steps, x scaling."""

  def __init__(self, name: str, model_dir: str, x: str):
    self.name, self.model_dir = name, model_dir
    if not os.path.isdir(model_dir):
      raise CurveError(f"run {name}: {model_dir} is not a directory")
    self.metrics = read_scalars(os.path.join(model_dir, "eval"))
    self.drops = lr_drops(model_dir, read_scalars(os.path.join(model_dir, "train")))
    self.per_step, self.offset = 1.0, 0.0
    if x != "iterations":
      self.per_step = float(global_batch(model_dir))
    if x == "images_incl_pretraining":
      self.offset = float(pretraining_images(model_dir))

  def xs(self, steps):
    return self.offset + self.per_step * np.asarray(steps, np.float64)


def compare(runs: Sequence[Run],
            metrics: Sequence[str],
            x: str,
            output: str,
            table: Optional[str] = None,
            csv_path: Optional[str] = None) -> Dict:
  """Plots, writes the table and CSV; returns {run: {metric: {final, best, ...}}} and the
  messages about what was missing."""
  summary, messages = {}, []
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
  rows = []
  for ax, metric in zip(axes[0], metrics):
    for i, run in enumerate(runs):
      points = run.metrics.get(metric)
      if not points:
        messages.append(f"run {run.name}: no {metric!r} in {run.model_dir}/eval (has "
                        f"{sorted(run.metrics) or 'no eval events'}); not plotted")
        continue
      steps, values = zip(*points)
      xs = run.xs(steps)
      colour = plt.get_cmap("tab10")(i % 10)
      ax.plot(xs, values, marker="o", markersize=3, color=colour, label=run.name)
      for d in run.drops:
        ax.axvline(run.xs([d])[0], color=colour, linestyle=":", linewidth=0.8)
      ax.annotate(f"{values[-1]:.3f}", (xs[-1], values[-1]),
                  textcoords="offset points",
                  xytext=(4, 0),
                  fontsize=8,
                  color=colour)
      best = int(np.argmax(values))
      summary.setdefault(run.name, {})[metric] = dict(final=values[-1],
                                                      final_step=steps[-1],
                                                      best=values[best],
                                                      best_step=steps[best])
      rows += [(run.name, metric, s, float(xv), v) for s, xv, v in zip(steps, xs, values)]
    ax.set_title(metric)
    ax.set_xlabel({
        "iterations": "iterations", "images": "images seen",
        "images_incl_pretraining": "images seen, incl. pre-training"
    }[x])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  lengths = {r.name: max((p[-1][0] for p in r.metrics.values() if p), default=0) for r in runs}
  if len(set(lengths.values())) > 1:
    messages.append("runs of different lengths (last eval step): " +
                    ", ".join(f"{k} {v}" for k, v in lengths.items()))
  if not rows:
    plt.close(fig)
    raise CurveError("nothing to plot: " + "; ".join(messages))
  fig.tight_layout()
  fig.savefig(output, dpi=100)
  plt.close(fig)
  if table:
    with open(table, "w") as f:
      f.write("| run | metric | final | at step | best | at step |\n|---|---|---|---|---|---|\n")
      for name, per in summary.items():
        for metric, s in per.items():
          f.write(f"| {name} | {metric} | {s['final']:.4f} | {s['final_step']} | "
                  f"{s['best']:.4f} | {s['best_step']} |\n")
  if csv_path:
    with open(csv_path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["run", "metric", "step", x, "value"])
      w.writerows(rows)
  return {"summary": summary, "messages": messages}


FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  runs = []
  try:
    for spec in FLAGS.run:
      if "=" not in spec:
        raise CurveError(f"--run {spec!r}: expected NAME=MODEL_DIR")
      name, model_dir = spec.split("=", 1)
      runs.append(Run(name, model_dir, FLAGS.x))
    result = compare(runs, FLAGS.metric, FLAGS.x, FLAGS.output, FLAGS.table, FLAGS.csv)
  except CurveError as e:
    raise SystemExit(f"compare_curves: {e}") from None
  for m in result["messages"]:
    print(f"note: {m}")
  print(f"wrote {FLAGS.output}" + (f", {FLAGS.table}" if FLAGS.table else "") +
        (f", {FLAGS.csv}" if FLAGS.csv else ""))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-compare-curves`)."""
  flags.DEFINE_multi_string("run", None, "NAME=MODEL_DIR (repeatable).", required=True)
  flags.DEFINE_multi_string("metric", ["bbox/AP", "segm/AP"], "Eval tags to plot.")
  flags.DEFINE_enum("x", "iterations", list(X_AXES), "Horizontal axis.")
  flags.DEFINE_string("output", "curves.png", "Figure (PNG).")
  flags.DEFINE_string("table", None, "Markdown table of final and best values.")
  flags.DEFINE_string("csv", None, "Every plotted point as CSV.")
  app.run(main)


if __name__ == "__main__":
  console_main()
