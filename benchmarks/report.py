"""The results JSON of `benchmarks.run` as the Markdown table of benchmarks/README.md."""

import json
import sys
from typing import Dict, List

# Targets of the performance issue: (suite, ratio key, comparison, bound).
TARGETS = [
    ("train", "ours_BN/model_garden_BN images_per_s", ">=", 1.5),
    ("train", "ours_SyncBN/model_garden_BN images_per_s", ">=", 1.5),
    ("train", "ours_GN/model_garden_BN images_per_s", ">=", 1.2),
    ("train", "ours_BN/model_garden_BN peak_rss", "<=", 1.0),
    ("train", "ours_SyncBN/model_garden_BN peak_rss", "<=", 1.0),
    ("infer", "images_per_s", ">=", 2.0),
    ("infer", "peak_rss", "<=", 1.0),
    ("export", "load_plus_first_call", "<=", 0.5),
    ("export", "peak_rss", "<=", 1.0),
    ("input", "ours_input/ours_training_consumption", ">=", 10.0),
    ("input", "ours/model_garden images_per_s", ">=", 1.0),
    ("eval", "images_per_s", ">=", 1.0),
    ("coco_shapes", "train fit/square images_per_s", ">=", 1.5),
    ("coco_shapes", "infer fit/square images_per_s", ">=", 1.5),
    ("coco_shapes", "train canvas pixels/detectron2's", "<=", 1.3),
]
# Ratios reported without a target: (suite, ratio key).
REPORTED = [
    ("export", "steady_latency"),
    ("export", "photo_4032x3024_steady_latency"),
    ("export", "photo_4032x3024_peak_rss"),
    ("coco_shapes", "train fit/model_garden images_per_s"),
    ("coco_shapes", "infer fit/model_garden images_per_s"),
    ("coco_shapes", "train fit/square peak_rss"),
    ("coco_shapes", "infer fit/square peak_rss"),
    ("coco_shapes", "square pixels/detectron2's"),
]


def _fmt(x, digits=3):
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
  return str(x)


def figure_rows(results: Dict) -> List[str]:
  rows = []
  for suite, data in results.items():
    if not isinstance(data, dict) or "figures" not in data:
      continue
    for name, fig in data["figures"].items():
      if name == "flops":
        continue
      keys = [
          k for k in ("images_per_s", "seconds_per_call", "load_plus_first_call_s",
                      "steady_latency_s", "first_call_s", "peak_rss_mb", "photo_steady_latency_s",
                      "photo_peak_rss_mb", "params") if k in fig
      ]
      rows.append(f"| {suite} | {name} | " + ", ".join(f"{k} {_fmt(fig[k])}" for k in keys) + " |")
  return rows


def markdown(results: Dict) -> str:
  s = results["settings"]
  m = results["machine"]
  lines = [
      f"Measured {results['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
      f"{m.get('mem_gib', '?')} GiB; {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.",
      f"Command: `{results['command']}` (size {s['size']}, batch {s['batch']}, "
      f"{s['precision']}, medians of {s['reps']} alternating repetitions of {s['steps']} "
      f"calls).", "", "| suite | figure | ours / theirs | target | met |", "|---|---|---:|---|---|"
  ]
  for suite, key, op, bound in TARGETS:
    ratio = results.get(suite, {}).get("ratios", {}).get(key)
    if ratio is None:
      continue
    met = ratio >= bound if op == ">=" else ratio <= bound
    lines.append(f"| {suite} | {key} | {ratio:.2f} | {op} {bound} | {'yes' if met else 'NO'} |")
  for suite, key in REPORTED:
    ratio = results.get(suite, {}).get("ratios", {}).get(key)
    if ratio is not None:
      lines.append(f"| {suite} | {key} | {ratio:.2f} | - | - |")
  if "flops" in results.get("train", {}).get("figures", {}):
    f = results["train"]["figures"]["flops"]
    dtype = "bfloat16" if "bfloat16" in s["precision"] else "float32"
    peak = f["matmul_flops_per_s"][dtype]
    lines.append(f"| train | FLOP utilization: achieved / {dtype} matmul FLOP/s (ours: 3 x "
                 f"{f['train_forward_flops'] / 1e9:.0f} GFLOP per step) | "
                 f"{f['achieved_flops_per_s'] / 1e9:.0f} / {peak / 1e9:.0f} GFLOP/s = "
                 f"{f['fraction_of_matmul']:.2f} (Model Garden "
                 f"{f['model_garden_achieved_flops_per_s'] / peak:.2f}) | - | - |")
  pixels = results.get("coco_shapes", {}).get("pixels_per_image")
  if pixels:
    lines.append("| coco_shapes | canvas pixels per image: " +
                 ", ".join(f"{k} {v:,.0f}" for k, v in pixels.items()) + " | - | - | - |")
  lines += ["", "| suite | contender | figures (medians) |", "|---|---|---|"]
  lines += figure_rows(results)
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    print(markdown(json.load(f)))
