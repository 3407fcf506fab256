"""The miniature study's report: what its runs measured, read as the paper reads its figures.

`write_report` turns the run directories of `tools/study.py` into `report.md` with its figures
and tables; `reading` states the comparison (the gap at each schedule, whether and where
scratch caught up, the iterations and images each arm needed for equal AP).
"""

import json
import os
import platform
from typing import Dict, List, Optional, Sequence, Tuple

from rethink_tf.training import study_plan
from rethink_tf.training.study_plan import INITS, StudyConfig

TIMES_FILE = "study_times.jsonl"


def _final_metrics(model_dir: str) -> Dict[int, Dict]:
  """{step: eval_metrics.jsonl row} of a run."""
  path = os.path.join(model_dir, "eval_metrics.jsonl")
  if not os.path.exists(path):
    return {}
  rows = [json.loads(line) for line in open(path) if line.strip()]
  return {r["step"]: r for r in rows}


def _ap(row: Optional[Dict], iou_type: str) -> Optional[float]:
  return row[iou_type]["AP"] if row and iou_type in row else None


def reading(cfg: StudyConfig,
            finals: Dict[str, Dict[int, Optional[float]]],
            pretrain_images: int,
            metric_name: str,
            pretrained_points: Sequence[Tuple[int, float]] = ()) -> List[str]:
  """Sentences read off the final APs: `finals[init][num_x]` -> AP (None when missing).
  `pretrained_points`: every (step, AP) evaluation of the full-data pretrained runs, to say
  at which iteration pretrained first reached each scratch result (else its finals are used)."""
  tol = cfg.catch_up_tolerance
  out = []
  scratch, pre = finals["scratch"], finals["pretrained"]
  xs = [n for n in cfg.schedules if scratch.get(n) is not None and pre.get(n) is not None]
  if not xs:
    return [f"No {metric_name} to compare: the runs have no final evaluation."]
  gaps = {n: scratch[n] - pre[n] for n in xs}
  for n in xs:
    out.append(f"At {n}x ({cfg.schedule(n).total_steps} iterations) scratch has {metric_name} "
               f"{scratch[n]:.3f} vs pretrained {pre[n]:.3f} ({gaps[n] * 100:+.1f} points).")
  if len(xs) > 1:
    out.append(f"The gap goes from {gaps[xs[0]] * 100:+.1f} points at {xs[0]}x to "
               f"{gaps[xs[-1]] * 100:+.1f} at {xs[-1]}x (largest magnitude "
               f"{max(abs(g) for g in gaps.values()) * 100:.1f}).")
  best_pre_x = max(xs, key=lambda n: pre[n])
  best_pre = pre[best_pre_x]
  # The pretrained model's "converged" point: its shortest schedule within tol of its best.
  pre_x = min(n for n in xs if pre[n] >= best_pre - tol)
  catch = [n for n in xs if scratch[n] >= best_pre - tol]
  if catch:
    n = catch[0]
    steps_s, steps_p = cfg.schedule(n).total_steps, cfg.schedule(pre_x).total_steps
    imgs_s = steps_s * cfg.global_batch_size
    imgs_p = steps_p * cfg.global_batch_size + pretrain_images
    out.append(
        f"Scratch caught up: at {n}x it reaches {scratch[n]:.3f}, within {tol * 100:.0f} point(s) "
        f"of the best pretrained {metric_name} ({best_pre:.3f} at {best_pre_x}x). Pretrained "
        f"got within that margin at {pre_x}x, so scratch needed {steps_s / steps_p:.1f}x the "
        f"fine-tuning iterations ({steps_s} vs {steps_p}); counting the images seen in "
        f"pre-training, scratch saw {imgs_s} images vs {imgs_p} for pretrained "
        f"({imgs_s / imgs_p:.2f}x).")
  else:
    n = max(xs, key=lambda n: scratch[n])
    out.append(
        f"Scratch did not catch up within {xs[-1]}x: its best {metric_name} is {scratch[n]:.3f} "
        f"(at {n}x), {(best_pre - scratch[n]) * 100:.1f} points below the best pretrained "
        f"{best_pre:.3f} ({best_pre_x}x); the tolerance is {tol * 100:.0f} point(s).")
  # At equal AP: the first iteration at which pretrained reached each scratch result.
  points = sorted(pretrained_points) or sorted((cfg.schedule(m).total_steps, pre[m]) for m in xs)
  matches = []
  for n in xs:
    reached = [(step, ap) for step, ap in points if ap >= scratch[n]]
    if reached:
      step, ap = reached[0]
      matches.append(f"scratch's {n}x result ({scratch[n]:.3f}, {cfg.schedule(n).total_steps} "
                     f"iterations) was reached by pretrained at iteration {step} ({ap:.3f}): "
                     f"{cfg.schedule(n).total_steps / step:.1f}x the iterations")
    else:
      matches.append(f"scratch's {n}x result ({scratch[n]:.3f}) was never reached by pretrained")
  out.append(f"At equal AP (pretrained is evaluated every {cfg.eval_every_steps} iterations and "
             "at each schedule's end, so its iterations are upper bounds): " + "; ".join(matches) +
             ".")
  behind = [n for n in xs if scratch[n] < pre[n] - tol]
  if behind:
    out.append("Scratch is behind by more than the tolerance at: " +
               ", ".join(f"{n}x" for n in behind) + ".")
  return out


def write_report(
    cfg: StudyConfig, output_dir: str,
    gin_files: Sequence[str] = ("gin_configs/demo/study.gin",)) -> str:
  """Figures, tables and reading -> OUTPUT_DIR/report.md; returns its path. `gin_files` are
  named in the report's command line."""
  import matplotlib.pyplot as plt

  from rethink_tf.tools import compare_curves  # TF and matplotlib: only for the report

  longest = cfg.schedules[-1]
  figures = []

  def curves(name, runs, x, title):
    runs = [(label, os.path.join(output_dir, d))
            for label, d in runs
            if os.path.isdir(os.path.join(output_dir, d))]
    result = compare_curves.compare([compare_curves.Run(label, d, x) for label, d in runs],
                                    ["bbox/AP", "segm/AP"], x,
                                    os.path.join(output_dir, name + ".png"),
                                    os.path.join(output_dir, name + ".md"),
                                    os.path.join(output_dir, name + ".csv"))
    figures.append((title, name, result))
    return result

  pairs = [(f"{init} {longest}x", study_plan.run_name(init, longest)) for init in INITS]
  curves(
      "curves_iterations", pairs, "iterations",
      f"AP against iterations, {longest}x schedule (dotted lines: LR drops; cf. the paper's "
      "Fig. 1)")
  curves("curves_images_incl_pretraining", pairs, "images_incl_pretraining",
         "AP against images seen, including the pre-training's images (cf. Fig. 2)")
  curves(
      "curves_all_schedules",
      [(f"{init} {n}x", study_plan.run_name(init, n)) for n in cfg.schedules for init in INITS],
      "iterations",
      "Every schedule (the shorter ones fork off the longest before their first LR drop; "
      "cf. Fig. 3)")
  if cfg.less_data_schedules:
    curves("curves_less_data", [(f"{init} {n}x, {cfg.less_data_num_train} images",
                                 study_plan.run_name(init, n, cfg.less_data_num_train))
                                for n in cfg.less_data_schedules
                                for init in INITS], "iterations",
           f"Less data: {cfg.less_data_num_train} training images (cf. Fig. 6)")

  # Final AP per schedule and init.
  finals = {t: {init: {} for init in INITS} for t in ("bbox", "segm")}
  for _, init, n in study_plan.schedule_runs(cfg):
    rows = _final_metrics(os.path.join(output_dir, study_plan.run_name(init, n)))
    last = rows.get(cfg.schedule(n).total_steps)
    for t in finals:
      finals[t][init][n] = _ap(last, t)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, (t, label) in zip(axes, (("bbox", "box AP"), ("segm", "mask AP"))):
    for init, marker in zip(INITS, ("o", "s")):
      xs = [n for n in cfg.schedules if finals[t][init][n] is not None]
      ax.plot(xs, [finals[t][init][n] for n in xs], marker=marker, label=init)
      for n in xs:
        ax.annotate(f"{finals[t][init][n]:.3f}", (n, finals[t][init][n]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8)
    ax.set_xticks(list(cfg.schedules))
    ax.set_xticklabels([f"{n}x\n{cfg.schedule(n).total_steps} it" for n in cfg.schedules])
    ax.set_ylabel(f"final {label}")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, "final_ap_by_schedule.png"), dpi=100)
  plt.close(fig)

  meta_path = os.path.join(output_dir, "pretrain", "backbone.json")
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  pretrain_images = int(meta.get("images_seen", 0))
  times = [json.loads(line) for line in open(os.path.join(output_dir, TIMES_FILE))] \
      if os.path.exists(os.path.join(output_dir, TIMES_FILE)) else []
  total_s = sum(t["seconds"] for t in times)

  lines = ["# Rethinking ImageNet pre-training, in miniature", ""]
  lines += [
      "Produced by `python -m rethink_tf.tools.study " +
      " ".join(f"--gin_file={f}" for f in gin_files) + " --output_dir=DIR` on the embedded "
      "synthetic data. A small Mask R-CNN FPN with GroupNorm "
      "(the demo model) is trained from a pre-trained backbone and from random initialization "
      f"at schedules {', '.join(f'{n}x' for n in cfg.schedules)} (1x = {cfg.steps_per_x} "
      f"iterations at batch {cfg.global_batch_size}; from 2x on the LR drops x0.1 in the last "
      "2/3 and 2/9 of a 1x, the paper's last 60k and 20k iterations; 1x drops at 2/3 and 8/9, "
      f"Detectron's), evaluated every {cfg.eval_every_steps} iterations and at the end on the "
      "validation split (COCO AP by pycocotools).", ""
  ]
  if meta:
    lines += [
        "**Pre-training** (the stand-in for ImageNet): the same backbone as a 10-way "
        f"classifier on {meta['num_train']} synthetic images of {meta['image_size']} px "
        f"whose classes are shapes the detector never sees ({', '.join(meta['classes'])}); "
        f"{meta['steps']} steps at batch {meta['batch_size']} = **{pretrain_images} images "
        f"seen**, validation top-1 **{meta['val_top1']:.3f}**.", ""
    ]
  lines += [
      "## Final AP by schedule", "",
      "| schedule | iterations | box AP scratch | box AP pretrained | mask AP scratch | "
      "mask AP pretrained |", "|---|---|---|---|---|---|"
  ]

  def f3(v):
    return "—" if v is None else f"{v:.3f}"

  for n in cfg.schedules:
    lines.append(f"| {n}x | {cfg.schedule(n).total_steps} | {f3(finals['bbox']['scratch'][n])} "
                 f"| {f3(finals['bbox']['pretrained'][n])} | {f3(finals['segm']['scratch'][n])} "
                 f"| {f3(finals['segm']['pretrained'][n])} |")
  lines += ["", "![final AP by schedule](final_ap_by_schedule.png)", "", "## Reading", ""]
  for t, name in (("bbox", "box AP"), ("segm", "mask AP")):
    points = [(step, row[t]["AP"]) for n in cfg.schedules for step, row in _final_metrics(
        os.path.join(output_dir, study_plan.run_name("pretrained", n))).items() if t in row]
    lines += [
        f"**{name}.** " + " ".join(reading(cfg, finals[t], pretrain_images, name, points)), ""
    ]
  if cfg.less_data_schedules:
    for n in cfg.less_data_schedules:
      row = {}
      for init in INITS:
        rows = _final_metrics(
            os.path.join(output_dir, study_plan.run_name(init, n, cfg.less_data_num_train)))
        row[init] = (rows.get(cfg.schedule(n).total_steps),
                     max((r["bbox"]["AP"] for r in rows.values()), default=None))
      sa, pa = _ap(row["scratch"][0], "bbox"), _ap(row["pretrained"][0], "bbox")
      if sa is None or pa is None:
        lines += [f"**Less data ({n}x).** incomplete: a run has no final evaluation.", ""]
        continue
      verdict = ("catches up with" if sa >= pa - cfg.catch_up_tolerance else "falls short of")
      overfit = [
          f"{init} peaks at {row[init][1]:.3f} before its final {_ap(row[init][0], 'bbox'):.3f}"
          for init in INITS
          if row[init][1] > _ap(row[init][0], "bbox") + 0.005
      ]
      overfit = ("; ".join(overfit) + " (overfitting)") if overfit else (
          "no sign of overfitting: each run's best box AP is within half a point of its final")
      lines += [
          f"**Less data ({cfg.less_data_num_train} training images, {n}x).** Scratch "
          f"{verdict} pretrained: final box AP {sa:.3f} vs {pa:.3f} ({(sa - pa) * 100:+.1f} "
          f"points), mask AP {f3(_ap(row['scratch'][0], 'segm'))} vs "
          f"{f3(_ap(row['pretrained'][0], 'segm'))}; {overfit}. With the full 2000 images "
          f"the same {n}x schedule gave box AP {f3(finals['bbox']['scratch'].get(n))} (scratch) "
          f"and {f3(finals['bbox']['pretrained'].get(n))} (pretrained).", ""
      ]
  lines += ["## Figures", ""]
  for title, name, result in figures:
    lines += [f"### {title}", "", f"![{name}]({name}.png)", ""]
    lines += [open(os.path.join(output_dir, name + ".md")).read().strip(), ""]
    for m in result["messages"]:
      lines += [f"Note: {m}", ""]
  lines += [
      "## Time", "",
      f"Measured on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}"
      f", {_cpu_model()}), no accelerator. Sum of the stages' wall times: "
      f"**{total_s / 60:.1f} min**.", "", "| stage | steps | wall time |", "|---|---|---|"
  ]
  for t in times:
    what = t["stage"] + (f" (to step {t['stop_at']})" if t.get("stop_at") else "")
    lines.append(f"| {what} | {t.get('steps', '')} | {t['seconds'] / 60:.1f} min |")
  lines += [
      "", "Curves as CSV: `curves_*.csv`. Every number above is read from the runs' "
      "`eval_metrics.jsonl` and TensorBoard event files by `rethink_tf.tools.study "
      "--report_only`.", ""
  ]
  path = os.path.join(output_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"
