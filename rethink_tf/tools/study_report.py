"""The miniature study's report: what its runs measured, with their figures and tables.

`write_report` turns the run directories of `tools/study.py` into `report.md`: AP by schedule
as mean and range over seeds, the reading of `study_reading.py` (gaps with the seed spread, the
pretrained arm's plateau, where scratch came within the spread), the reference row beside a
peer's figure, the less-data table, the curves and the measured times.
"""

import json
import os
import platform
from typing import Dict, List, Sequence, Tuple

from rethink_tf.tools.study_reading import (
    Spread,
    less_data_reading,
    margin,
    points,
    reading,
    spread_of,
)
from rethink_tf.training import study_plan
from rethink_tf.training.study_plan import INITS, StudyConfig

TIMES_FILE = "study_times.jsonl"
IOU_TYPES = ("bbox", "segm")


def _final_metrics(model_dir: str) -> Dict[int, Dict]:
  """{step: eval_metrics.jsonl row} of a run."""
  path = os.path.join(model_dir, "eval_metrics.jsonl")
  if not os.path.exists(path):
    return {}
  rows = [json.loads(line) for line in open(path) if line.strip()]
  return {r["step"]: r for r in rows}


def _curve(model_dir: str, iou_type: str) -> Dict[int, float]:
  rows = _final_metrics(model_dir)
  return {step: row[iou_type]["AP"] for step, row in rows.items() if iou_type in row}


def _finals(cfg: StudyConfig, output_dir: str) -> Dict[str, Dict[str, Dict[int, Spread]]]:
  """finals[iou_type][init][num_x]: the seeds' final APs of the full-data runs."""
  out = {t: {init: {} for init in INITS} for t in IOU_TYPES}
  for t in IOU_TYPES:
    for init in INITS:
      for n in cfg.schedules:
        total = cfg.schedule(n).total_steps
        vals = [
            _curve(os.path.join(output_dir, study_plan.run_name(init, n, seed=s)), t).get(total)
            for s in cfg.seeds_of(init, n)
        ]
        sp = spread_of(vals)
        if sp is not None:
          out[t][init][n] = sp
  return out


def _mean_curve(dirs: Sequence[str], iou_type: str) -> List[Tuple[int, float]]:
  """(step, mean AP over the runs evaluated at that step) of runs sharing evaluation steps."""
  per_step: Dict[int, List[float]] = {}
  for d in dirs:
    for step, ap in _curve(d, iou_type).items():
      per_step.setdefault(step, []).append(ap)
  return sorted((step, sum(v) / len(v)) for step, v in per_step.items())


def _schedule_table(cfg: StudyConfig, finals) -> List[str]:
  lines = [
      "| schedule | iterations | seeds (scratch / pretrained) | box AP scratch | box AP "
      "pretrained | box gap (spread) | mask AP scratch | mask AP pretrained | mask gap (spread) |",
      "|---|---|---|---|---|---|---|---|---|"
  ]
  for n in cfg.schedules:
    cells = []
    for t in IOU_TYPES:
      s, p = finals[t]["scratch"].get(n), finals[t]["pretrained"].get(n)
      one_seed = s and p and len(s.values) == len(p.values) == 1
      gap = ("—" if not (s and p) else f"{points(s.mean - p.mean)} (1 seed)"
             if one_seed else f"{points(s.mean - p.mean)} ({margin(s, p) * 100:.1f})")
      cells += [str(s) if s else "—", str(p) if p else "—", gap]
    seeds = " / ".join(
        str(len(finals["bbox"][i][n].values)) if n in finals["bbox"][i] else "0" for i in INITS)
    lines.append(f"| {n}x | {cfg.schedule(n).total_steps} | {seeds} | " + " | ".join(cells) + " |")
  return lines


def _reference_section(cfg: StudyConfig, output_dir: str) -> List[str]:
  """Ours at the reference configuration over its seeds, beside the peer's figure."""
  n = cfg.reference_schedule
  seeds = cfg.seeds_of("scratch", n)
  total = cfg.schedule(n).total_steps
  per_seed = {}
  for s in seeds:
    curve_dir = os.path.join(output_dir, study_plan.run_name("scratch", n, seed=s))
    per_seed[s] = {t: _curve(curve_dir, t).get(total) for t in IOU_TYPES}
  ours = {t: spread_of([per_seed[s][t] for s in seeds]) for t in IOU_TYPES}
  lines = [
      "## The reference configuration beside its peer", "",
      f"Scratch at {n}x ({total} iterations at batch {cfg.global_batch_size}, LR "
      f"{cfg.schedule(n).base_lr:g}, decays at {', '.join(map(str, cfg.schedule(n).boundaries))}, "
      f"warmup {cfg.warmup_steps}) is the reference configuration "
      "(`StudyConfig.reference_schedule`; in `gin_configs/demo/study.gin` it is the demo's, "
      "`gin_configs/demo/shapes_scratch.gin`).", "", "| run | seeds | box AP | mask AP |",
      "|---|---|---|---|"
  ]
  if cfg.reference:
    lines.append(f"| {cfg.reference['label']} | 1 | {cfg.reference['box_ap']:.3f} | "
                 f"{cfg.reference['mask_ap']:.3f} |")
  n_ours = len(ours["bbox"].values) if ours["bbox"] else 0
  lines.append(f"| rethink_tf (this study), mean [min, max] | {n_ours} "
               f"| {ours['bbox'] or '—'} | {ours['segm'] or '—'} |")
  for s in seeds:
    v = per_seed[s]
    lines.append(f"| rethink_tf, seed {s} | 1 | " +
                 " | ".join("—" if v[t] is None else f"{v[t]:.3f}" for t in IOU_TYPES) + " |")
  if cfg.reference and ours["bbox"] and ours["segm"]:
    said = []
    for t, key, name in (("bbox", "box_ap", "box"), ("segm", "mask_ap", "mask")):
      ref, o = cfg.reference[key], ours[t]
      where = ("inside our seeds' range"
               if o.lo <= ref <= o.hi else f"{'above' if ref > o.hi else 'below'} our seeds' range")
      said.append(f"{name} AP {ref:.3f} is {points(ref - o.mean)} points from our mean, {where}")
    lines += ["", f"detectron2's {' and '.join(said)}."]
  return lines + [""]


def _less_data_section(cfg: StudyConfig, output_dir: str, finals) -> List[str]:
  lines = [
      "## Less data", "",
      f"Each run is evaluated every {cfg.less_data_eval_every_steps} iterations and at its end; "
      "its best evaluation against its final one is the overfitting check.", "",
      "| training images | schedule | init | seeds | final box AP | best box AP (step) | "
      "final mask AP |", "|---|---|---|---|---|---|---|"
  ]
  texts = []
  for num_train in cfg.less_data_num_train:
    for n in cfg.less_data_schedules:
      total = cfg.schedule(n).total_steps
      runs = {}
      for init in INITS:
        dirs = [
            os.path.join(output_dir, study_plan.run_name(init, n, num_train, s))
            for s in cfg.less_data_seeds
        ]
        box = spread_of([_curve(d, "bbox").get(total) for d in dirs])
        mask = spread_of([_curve(d, "segm").get(total) for d in dirs])
        curve = _curve(dirs[0], "bbox")
        best = max(((ap, step) for step, ap in curve.items()), default=None)
        lines.append(f"| {num_train} | {n}x | {init} | {len(cfg.less_data_seeds)} | "
                     f"{box or '—'} | " + (f"{best[0]:.3f} ({best[1]})" if best else "—") +
                     f" | {mask or '—'} |")
        if box is not None and best is not None:
          runs[init] = {"final": box, "best": best}
      if len(runs) == 2:
        full = {i: finals["bbox"][i][n] for i in INITS if n in finals["bbox"][i]}
        texts.append(less_data_reading(num_train, n, runs, full, cfg.catch_up_tolerance))
      else:
        texts.append(f"**{num_train} training images, {n}x.** incomplete: a run has no final "
                     "evaluation.")
  for n in cfg.less_data_schedules:
    full = [finals["bbox"][i].get(n) for i in INITS]
    lines.append(f"| {_full_train_size()} (all) | {n}x | scratch / pretrained | "
                 f"{' / '.join(str(len(f.values)) if f else '0' for f in full)} | "
                 f"{' / '.join(f'{f.mean:.3f}' if f else '—' for f in full)} (means) | | |")
  return lines + [""] + [t + "\n" for t in texts]


def _full_train_size() -> int:
  """The full training set's size (`SyntheticDataset.num_train` as bound, else its default)."""
  from rethink_tf.data.synthetic import SyntheticDataset
  return SyntheticDataset().params["num_train"]


def write_report(cfg: StudyConfig,
                 output_dir: str,
                 command: str = "--gin_file=gin_configs/demo/study.gin") -> str:
  """Figures, tables and reading -> OUTPUT_DIR/report.md; returns its path. `command` holds
  the study's flags as the report prints them."""
  import matplotlib.pyplot as plt

  from rethink_tf.tools import compare_curves  # TF and matplotlib: only for the report

  figures = []
  first_seed = cfg.seeds[0]

  def curves(name, runs, x, title):
    runs = [(label, os.path.join(output_dir, d))
            for label, d in runs
            if os.path.isdir(os.path.join(output_dir, d))]
    if not runs:
      return
    result = compare_curves.compare([compare_curves.Run(label, d, x) for label, d in runs],
                                    ["bbox/AP", "segm/AP"], x,
                                    os.path.join(output_dir, name + ".png"),
                                    os.path.join(output_dir, name + ".md"),
                                    os.path.join(output_dir, name + ".csv"))
    figures.append((title, name, result))

  longest = {init: cfg.arm_schedules[init][-1] for init in INITS}
  pairs = [(f"{init} {longest[init]}x, seed {s}", study_plan.run_name(init, longest[init], seed=s))
           for init in INITS
           for s in cfg.seeds]
  curves(
      "curves_iterations", pairs, "iterations",
      "AP against iterations, each arm's longest schedule, every seed (dotted lines: LR "
      "drops; cf. the paper's Fig. 1)")
  curves("curves_images_incl_pretraining", pairs, "images_incl_pretraining",
         "AP against images seen, including the pre-training's images (cf. Fig. 2)")
  curves(
      "curves_all_schedules", [(f"{init} {n}x", study_plan.run_name(init, n, seed=first_seed))
                               for n in cfg.schedules
                               for init in INITS
                               if first_seed in cfg.seeds_of(init, n)], "iterations",
      f"Every schedule, seed {first_seed} (the shorter ones fork off the longest before their "
      "first LR drop; cf. Fig. 3)")
  if cfg.less_data_schedules:
    curves(
        "curves_less_data",
        [(f"{init} {n}x, {k} images", study_plan.run_name(init, n, k, cfg.less_data_seeds[0]))
         for k in cfg.less_data_num_train
         for n in cfg.less_data_schedules
         for init in INITS], "iterations", "Less data: " +
        " and ".join(map(str, cfg.less_data_num_train)) + " training images (cf. Fig. 6)")

  finals = _finals(cfg, output_dir)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, (t, label) in zip(axes, (("bbox", "box AP"), ("segm", "mask AP"))):
    for init, marker in zip(INITS, ("o", "s")):
      xs = sorted(finals[t][init])
      means = [finals[t][init][n].mean for n in xs]
      err = [[m - finals[t][init][n].lo for n, m in zip(xs, means)],
             [finals[t][init][n].hi - m for n, m in zip(xs, means)]]
      ax.errorbar(xs, means, yerr=err, marker=marker, capsize=4, label=f"{init} (mean, range)")
      for n, m in zip(xs, means):
        ax.annotate(f"{m:.3f}", (n, m), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if cfg.reference and cfg.reference_schedule:
      key = "box_ap" if t == "bbox" else "mask_ap"
      ax.plot([cfg.reference_schedule], [cfg.reference[key]],
              "k*",
              markersize=10,
              label=cfg.reference["label"])
    ax.set_xticks(list(cfg.schedules))
    ax.set_xticklabels([f"{n}x\n{cfg.schedule(n).total_steps} it" for n in cfg.schedules])
    ax.set_ylabel(f"final {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, "final_ap_by_schedule.png"), dpi=100)
  plt.close(fig)

  meta_path = os.path.join(output_dir, "pretrain", "backbone.json")
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  times = [json.loads(line) for line in open(os.path.join(output_dir, TIMES_FILE))] \
      if os.path.exists(os.path.join(output_dir, TIMES_FILE)) else []
  stages = [t for t in times if t["stage"] != "study"]
  wall = sum(t["seconds"] for t in times if t["stage"] == "study")
  steps_of = {n: cfg.schedule(n).total_steps for n in cfg.schedules}

  seed_note = ""
  if len(cfg.seeds) > 1 and cfg.every_seed_longest:
    every = {
        init: [f"{n}x" for n in cfg.arm_schedules[init] if len(cfg.seeds_of(init, n)) > 1]
        for init in INITS
    }
    seed_note = (f" (every seed at {', '.join(every['pretrained'])} pretrained and "
                 f"{', '.join(every['scratch'])} scratch, seed {cfg.seeds[0]} alone elsewhere)")
  elif len(cfg.seeds) > 1 and cfg.single_seed_below > 1:
    seed_note = f" (seed {cfg.seeds[0]} alone below {cfg.single_seed_below}x)"
  lines = ["# Rethinking ImageNet pre-training, in miniature", ""]
  lines += [
      f"Produced by `python -m rethink_tf.tools.study {command} --output_dir=DIR` on the "
      "embedded synthetic data. A small Mask R-CNN FPN with GroupNorm (the demo model) is "
      "trained from a pre-trained backbone at "
      f"{', '.join(f'{n}x' for n in cfg.arm_schedules['pretrained'])} and from random "
      f"initialization at {', '.join(f'{n}x' for n in cfg.arm_schedules['scratch'])} (1x = "
      f"{cfg.schedule(1).total_steps} iterations at batch {cfg.global_batch_size}, LR "
      f"{cfg.schedule(1).base_lr:g} after a {cfg.warmup_steps}-iteration warmup; from 2x on the "
      "LR drops x0.1 in the last 2/3 and 2/9 of a 1x, the paper's last 60k and 20k iterations; "
      f"1x drops at 2/3 and 8/9, Detectron's), with seeds {', '.join(map(str, cfg.seeds))}"
      f"{seed_note}, evaluated every {cfg.eval_every_steps} iterations and at the end on the "
      "200 validation "
      "images (COCO AP by pycocotools). Every AP below is the mean over seeds with its range "
      "[min, max]; a gap is the difference of the means, stated with the seed spread (the "
      "larger of the two ranges).", ""
  ]
  if meta:
    lines += [
        f"**Pre-training** (the stand-in for ImageNet): the same backbone as a "
        f"{len(meta['classes'])}-way classifier on {meta['num_train']} synthetic images of "
        f"{meta['image_size']} px whose classes are shapes the detector never sees "
        f"({', '.join(meta['classes'])}); {meta['steps']} steps at batch {meta['batch_size']} = "
        f"**{int(meta['images_seen'])} images seen**, validation top-1 "
        f"**{meta['val_top1']:.3f}** on {meta.get('num_val', 'its')} held-out images.", ""
    ]
  lines += ["## Final AP by schedule", ""] + _schedule_table(cfg, finals)
  lines += ["", "![final AP by schedule](final_ap_by_schedule.png)", "", "## Reading", ""]
  for t, name in (("bbox", "box AP"), ("segm", "mask AP")):
    longest_pre = [
        os.path.join(output_dir, study_plan.run_name("pretrained", longest["pretrained"], seed=s))
        for s in cfg.seeds
    ]
    curve = _mean_curve(longest_pre, t)
    text = reading(finals[t], steps_of, name, cfg.catch_up_tolerance,
                   _first_reached(cfg, output_dir, t))
    text += _last_evaluations(curve, cfg.schedule(longest["pretrained"]).boundaries)
    lines += [f"**{name}.** " + " ".join(text), ""]
  if cfg.reference_schedule:
    lines += _reference_section(cfg, output_dir)
  if cfg.less_data_schedules:
    lines += _less_data_section(cfg, output_dir, finals)
  lines += ["## Figures", ""]
  for title, name, result in figures:
    lines += [f"### {title}", "", f"![{name}]({name}.png)", ""]
    lines += [open(os.path.join(output_dir, name + ".md")).read().strip(), ""]
    for m in result["messages"]:
      lines += [f"Note: {m}", ""]
  lines += [
      "## Time", "",
      f"Measured on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}"
      f", {_cpu_model()}), no accelerator, stages run "
      f"{max([t.get('jobs', 1) for t in times if t['stage'] == 'study'], default=1)} at a time. "
      f"Wall time of the study: **{wall / 60:.1f} min** (sum of its invocations); sum of the "
      f"stages' own wall times: {sum(t['seconds'] for t in stages) / 60:.1f} min.", "",
      "| stage | steps | wall time |", "|---|---|---|"
  ]
  for t in stages:
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


def _last_evaluations(curve: Sequence[Tuple[int, float]], decays: Sequence[int]) -> List[str]:
  """Sentences on the last two evaluations of the longest pretrained schedule (`curve`: (step,
  mean AP over seeds)): overall, naming the LR decays between them (a decay lifts AP by several
  points at once), and at constant LR, i.e. before its first decay."""
  spans = [("", list(curve))]
  if decays:
    spans.append((f" at constant LR, before its first decay at {decays[0]}",
                  [p for p in curve if p[0] <= decays[0]]))
  out = []
  for what, span in spans:
    if len(span) < 2:
      continue
    (a, ap_a), (b, ap_b) = span[-2:]
    between = [str(d) for d in decays if a < d <= b]
    note = (f"; the LR decays at {' and '.join(between)} lie between them" if len(between) > 1 else
            f"; the LR decay at {between[0]} lies between them" if between else "")
    out.append(f"On the longest pretrained schedule the last two evaluations{what} (iterations "
               f"{a} and {b}, mean over seeds) differ by {points(ap_b - ap_a)} points{note}.")
  return out


def _first_reached(cfg: StudyConfig, output_dir: str, iou_type: str) -> List[Tuple[int, float]]:
  """The pretrained arm's evaluations as (step, AP): each schedule's curve averaged over its
  seeds, the schedules' points side by side. Averaging across schedules would mix, at one
  step, a run's final AP after its LR decays with a longer run's AP at constant LR."""
  points_ = []
  for n in cfg.arm_schedules["pretrained"]:
    dirs = [
        os.path.join(output_dir, study_plan.run_name("pretrained", n, seed=s))
        for s in cfg.seeds_of("pretrained", n)
    ]
    points_ += _mean_curve(dirs, iou_type)
  return sorted(points_)


def _cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"
