r"""Benchmarks our Mask R-CNN against Model Garden's, in the same run on the same machine.

  python -m benchmarks.run --suite=all|train,infer,export,input,eval --size=512 --batch=2 \
      [--reps=3] [--steps=1] [--precision=float32|mixed_bfloat16] [--jit_compile] \
      [--json=FILE] [--markdown=FILE]

Every contender runs in its own process (`benchmarks/worker.py`): built, warmed up (the first
call traces), then timed in alternation with its peer (A, B, A, B, ... `--reps` times, `--steps`
calls each) so that the noise of a shared machine hits both. Figures are medians over the
repetitions; ratios are ours / theirs for throughput (higher is better) and for time and memory
(lower is better). Peak memory is each process's peak resident set (ru_maxrss).

Suites:
  train   training step images/s: ours BN and GN vs Model Garden (BN); peak memory; achieved
          FLOP/s of our step as a fraction of this CPU's matmul FLOP/s.
  infer   in-process inference images/s (padded float images -> detections with masks).
  export  SavedModel of each (their `export_inference_graph`, ours `export.export_saved_model`):
          load + first call in a fresh process, then steady-state latency, uint8 images in.
  input   input pipeline images/s (read, JPEG decode, resize/pad, targets) vs the training
          step's consumption rate of the same config (from `train` in this run, else measured).
  eval    our evaluation loop (inference + mask pasting + RLE + COCOeval) images/s vs Model
          Garden's validation loop with its COCO evaluator, on the same validation images.
  coco_shapes  training and inference images/s on synthetic images of COCO's shapes (the 100
          val2014 sizes, 400/667): ours on canvases that fit the images vs ours on one 672 x 672
          square (the same code) vs Model Garden at its square input; canvas pixels per image
          (ours, detectron2's rule, the square).
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Dict

from absl import app, flags

from benchmarks.worker import PREFIX

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("train", "infer", "export", "input", "eval", "coco_shapes")


class Worker:
  """A contender process; `run(n)` times n calls, `quit()` returns its peak RSS in MB."""

  def __init__(self, name: str, spec: Dict, log_dir: str):
    self.name = name
    self.log = os.path.join(log_dir, f"{name}.log")
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    with open(self.log, "w") as log:
      self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker",
                                    json.dumps(spec)],
                                   cwd=ROOT,
                                   env=env,
                                   stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE,
                                   stderr=log,
                                   text=True)
    print(f"[{name}] building ...", flush=True)
    self.ready = self._read("ready")
    first = self.ready.get("first_call_s")
    print(f"[{name}] built in {self.ready['build_s']:.1f}s" +
          (f", first call {first:.1f}s" if first is not None else ""),
          flush=True)

  def _read(self, event: str) -> Dict:
    for line in self.proc.stdout:
      if line.startswith(PREFIX):
        record = json.loads(line[len(PREFIX):])
        if record["event"] == event:
          return record
    self.proc.wait()
    raise RuntimeError(f"benchmark contender {self.name} exited with code "
                       f"{self.proc.returncode} before '{event}'; its log: {self.log}")

  def run(self, n: int) -> float:
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    return self._read("timed")["seconds"]

  def quit(self) -> float:
    self.proc.stdin.write("quit\n")
    self.proc.stdin.flush()
    rss = self._read("done")["peak_rss_mb"]
    self.proc.wait()
    return rss


def _spec(job, impl, **kw):
  return dict(job=job, impl=impl, size=FLAGS.size, batch=FLAGS.batch, **kw)


def alternate(contenders: Dict[str, Dict],
              log_dir: str,
              warmup: int,
              reps: int = None,
              steps: int = None,
              batch: int = None) -> Dict[str, Dict]:
  """Builds every contender (each in its process), times them in alternation: `reps` rounds of
  `steps` calls each; returns per-contender figures (medians over the rounds)."""
  reps, steps = reps or FLAGS.reps, steps or FLAGS.steps
  batch = batch or FLAGS.batch
  workers = {}
  try:
    for name, spec in contenders.items():
      workers[name] = Worker(name, dict(spec, warmup=warmup), log_dir)
    times = {name: [] for name in workers}
    for rep in range(reps):
      for name, w in workers.items():
        times[name].append(w.run(steps))
        print(f"  rep {rep + 1}/{reps} {name}: {times[name][-1]:.3f} s/call", flush=True)
    out = {}
    for name, w in workers.items():
      med = statistics.median(times[name])
      out[name] = dict(
          seconds_per_call=med,
          images_per_s=batch / med,
          seconds_all=times[name],
          first_call_s=w.ready.get("first_call_s"),
          build_s=w.ready["build_s"],
          peak_rss_mb=w.quit(),
          **{k: v for k, v in w.ready.items() if k not in ("event", "build_s", "first_call_s")})
    return out
  finally:
    for w in workers.values():
      if w.proc.poll() is None:
        w.proc.kill()


def _ratio(a, b):
  return a / b if b else None


def single(name, spec, log_dir) -> Dict:
  w = Worker(name, dict(spec, warmup=0), log_dir)
  w.quit()
  return w.ready


def suite_train(log_dir, results):
  prec, jit = FLAGS.precision, FLAGS.jit_compile
  contenders = {
      f"ours_{FLAGS.our_bn}":
          _spec("train", "ours", norm=FLAGS.our_bn, precision=prec, jit_compile=jit), "ours_GN":
              _spec("train", "ours", norm="GN", precision=prec, jit_compile=jit), "model_garden_BN":
                  _spec("train", "model_garden", precision=prec)
  }
  r = alternate(contenders, log_dir, warmup=2)
  mg = r["model_garden_BN"]
  ratios = {}
  for name in contenders:
    if name.startswith("ours"):
      ratios[f"{name}/model_garden_BN images_per_s"] = _ratio(r[name]["images_per_s"],
                                                              mg["images_per_s"])
      ratios[f"{name}/model_garden_BN peak_rss"] = _ratio(r[name]["peak_rss_mb"], mg["peak_rss_mb"])
  fl = single("flops", _spec("flops", "ours", norm=FLAGS.our_bn, precision=prec), log_dir)
  mm = single("matmul", _spec("matmul", "ours"), log_dir)["matmul_flops_per_s"]
  from benchmarks.flops import TRAIN_FLOPS_PER_FORWARD
  train_flops = TRAIN_FLOPS_PER_FORWARD * fl["train_forward_flops"]
  ours = r[f"ours_{FLAGS.our_bn}"]
  achieved = train_flops / ours["seconds_per_call"]
  peak = mm["bfloat16" if "bfloat16" in prec else "float32"]
  r["flops"] = dict(train_forward_flops=fl["train_forward_flops"],
                    train_step_flops=train_flops,
                    achieved_flops_per_s=achieved,
                    matmul_flops_per_s=mm,
                    fraction_of_matmul=achieved / peak,
                    model_garden_achieved_flops_per_s=train_flops / mg["seconds_per_call"])
  results["train"] = dict(figures=r, ratios=ratios)


def suite_infer(log_dir, results):
  prec = FLAGS.precision
  r = alternate(
      {
          f"ours_{FLAGS.our_bn}": _spec("infer", "ours", norm=FLAGS.our_bn, precision=prec),
          "model_garden_BN": _spec("infer", "model_garden", precision=prec)
      },
      log_dir,
      warmup=2)
  o, m = r[f"ours_{FLAGS.our_bn}"], r["model_garden_BN"]
  results["infer"] = dict(figures=r,
                          ratios={
                              "images_per_s": _ratio(o["images_per_s"], m["images_per_s"]),
                              "peak_rss": _ratio(o["peak_rss_mb"], m["peak_rss_mb"])
                          })


def suite_export(log_dir, results):
  export_root = tempfile.mkdtemp(prefix="bench_export_")
  paths = {}
  for impl in ("ours", "model_garden"):
    d = os.path.join(export_root, impl)
    paths[impl] = single(f"export_{impl}", _spec("export", impl, norm=FLAGS.our_bn, export_dir=d),
                         log_dir)["path"]
  runs = {impl: [] for impl in paths}
  photo_runs = {impl: [] for impl in paths}
  photo = os.path.join(export_root, "phone_4032x3024.jpg")  # written by the first photo worker
  for rep in range(FLAGS.reps):  # a fresh process per load, alternating
    for impl, path in paths.items():
      w = Worker(f"saved_model_{impl}_{rep + 1}", _spec("saved_model", impl, path=path, warmup=1),
                 log_dir)
      steady = w.run(FLAGS.steps)
      runs[impl].append(
          dict(load_s=w.ready["build_s"],
               first_call_s=w.ready["first_call_s"],
               steady_s=steady,
               peak_rss_mb=w.quit()))
    for impl, path in paths.items():  # the same export, `batch` copies of a 12 MP photo
      w = Worker(f"photo_{impl}_{rep + 1}",
                 _spec("saved_model", impl, path=path, warmup=1, photo=photo), log_dir)
      steady = w.run(FLAGS.steps)
      photo_runs[impl].append(dict(steady_s=steady, peak_rss_mb=w.quit()))
  fig = {}
  for impl, rs in runs.items():
    med = lambda k, rs=rs: statistics.median(x[k] for x in rs)
    fig[impl] = dict(
        load_s=med("load_s"),
        first_call_s=med("first_call_s"),
        load_plus_first_call_s=statistics.median(x["load_s"] + x["first_call_s"] for x in rs),
        steady_latency_s=med("steady_s"),
        peak_rss_mb=med("peak_rss_mb"),
        photo_steady_latency_s=statistics.median(x["steady_s"] for x in photo_runs[impl]),
        photo_peak_rss_mb=statistics.median(x["peak_rss_mb"] for x in photo_runs[impl]),
        runs=rs,
        photo_runs=photo_runs[impl],
        path=paths[impl])
  o, m = fig["ours"], fig["model_garden"]
  results["export"] = dict(figures=fig,
                           ratios={
                               "load_plus_first_call":
                                   _ratio(o["load_plus_first_call_s"], m["load_plus_first_call_s"]),
                               "steady_latency":
                                   _ratio(o["steady_latency_s"], m["steady_latency_s"]), "peak_rss":
                                       _ratio(o["peak_rss_mb"], m["peak_rss_mb"]),
                               "photo_4032x3024_steady_latency":
                                   _ratio(o["photo_steady_latency_s"],
                                          m["photo_steady_latency_s"]), "photo_4032x3024_peak_rss":
                                              _ratio(o["photo_peak_rss_mb"], m["photo_peak_rss_mb"])
                           })


def suite_input(log_dir, results):
  r = alternate(
      {
          "ours": _spec("input", "ours", norm=FLAGS.our_bn), "model_garden": _spec(
              "input", "model_garden")
      },
      log_dir,
      warmup=3,
      steps=FLAGS.input_batches)
  if "train" in results:
    consumption = results["train"]["figures"][f"ours_{FLAGS.our_bn}"]["images_per_s"]
    source = "train suite of this run"
  else:
    t = alternate(
        {
            f"train_ours_{FLAGS.our_bn}":
                _spec("train",
                      "ours",
                      norm=FLAGS.our_bn,
                      precision=FLAGS.precision,
                      jit_compile=FLAGS.jit_compile)
        },
        log_dir,
        warmup=2)
    consumption = next(iter(t.values()))["images_per_s"]
    source = "measured by this suite"
  results["input"] = dict(figures=r,
                          training_consumption_images_per_s=consumption,
                          consumption_source=source,
                          ratios={
                              "ours_input/ours_training_consumption":
                                  _ratio(r["ours"]["images_per_s"], consumption),
                              "ours/model_garden images_per_s":
                                  _ratio(r["ours"]["images_per_s"],
                                         r["model_garden"]["images_per_s"])
                          })


def suite_eval(log_dir, results):
  n = FLAGS.eval_images
  r = alternate(
      {
          f"ours_{FLAGS.our_bn}": _spec("eval", "ours", norm=FLAGS.our_bn, images=n),
          "model_garden_BN": _spec("eval", "model_garden", images=n)
      },
      log_dir,
      warmup=1)
  for fig in r.values():  # one call evaluates n images, not a batch
    fig["images_per_s"] = n / fig["seconds_per_call"]
  o, m = r[f"ours_{FLAGS.our_bn}"], r["model_garden_BN"]
  results["eval"] = dict(figures=r,
                         images=n,
                         ratios={
                             "images_per_s": _ratio(o["images_per_s"], m["images_per_s"]),
                             "peak_rss": _ratio(o["peak_rss_mb"], m["peak_rss_mb"])
                         })


def suite_coco_shapes(log_dir, results):
  from benchmarks import contenders
  out = {}
  for job in ("coco_train", "coco_infer"):
    r = alternate(
        {
            f"ours_{FLAGS.our_bn}_fit": _spec(job, "ours", norm=FLAGS.our_bn, canvas="fit"),
            f"ours_{FLAGS.our_bn}_square": _spec(job, "ours", norm=FLAGS.our_bn, canvas="square"),
            "model_garden_BN": _spec(job, "model_garden")
        },
        log_dir,
        warmup=4 if job == "coco_train" else 6)  # every canvas traced before timing
    fit, square = r[f"ours_{FLAGS.our_bn}_fit"], r[f"ours_{FLAGS.our_bn}_square"]
    mg = r["model_garden_BN"]
    out[job] = dict(
        figures=r,
        ratios={
            "fit/square images_per_s": _ratio(fit["images_per_s"], square["images_per_s"]),
            "fit/model_garden images_per_s": _ratio(fit["images_per_s"], mg["images_per_s"]),
            "fit/square peak_rss": _ratio(fit["peak_rss_mb"], square["peak_rss_mb"])
        })
  pixels = contenders.coco_shaped_pixels(FLAGS.batch)
  figures = {f"{job[5:]} {name}": fig for job in out for name, fig in out[job]["figures"].items()}
  ratios = {f"{job[5:]} {k}": v for job in out for k, v in out[job]["ratios"].items()}
  ratios["train canvas pixels/detectron2's"] = (pixels["ours_train_canvases"] /
                                                pixels["detectron2_rule"])
  ratios["square pixels/detectron2's"] = pixels["square"] / pixels["detectron2_rule"]
  results["coco_shapes"] = dict(figures=figures, pixels_per_image=pixels, ratios=ratios)


def machine() -> Dict:
  info = dict(platform=platform.platform(), python=platform.python_version(), cpus=os.cpu_count())
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
    info["cpu"] = next(
        l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name"))
    flags_line = next(l for l in text.splitlines() if l.startswith("flags")).split()
    info["cpu_features"] = sorted(
        f for f in flags_line if f.startswith(("avx512_bf16", "amx", "avx512f", "fma")))
    with open("/proc/meminfo") as f:
      info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, StopIteration):
    pass
  import importlib.metadata as md
  info["versions"] = {p: md.version(p) for p in ("tensorflow", "tf-keras", "tf-models-official")}
  return info


def main(argv):
  del argv
  suites = SUITES if FLAGS.suite == "all" else tuple(FLAGS.suite.split(","))
  unknown = [x for x in suites if x not in SUITES]
  if unknown:
    sys.exit(f"--suite: unknown {unknown}; choose from {', '.join(SUITES)} or all "
             "(comma-separated for several)")
  log_dir = FLAGS.worker_logs or tempfile.mkdtemp(prefix="bench_logs_")
  os.makedirs(log_dir, exist_ok=True)
  print(f"worker logs: {log_dir}", flush=True)
  results = dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                 command="python -m benchmarks.run " + " ".join(sys.argv[1:]),
                 settings=dict(size=FLAGS.size,
                               batch=FLAGS.batch,
                               reps=FLAGS.reps,
                               steps=FLAGS.steps,
                               precision=FLAGS.precision,
                               jit_compile=FLAGS.jit_compile,
                               our_bn=FLAGS.our_bn),
                 machine=machine())
  fns = dict(train=suite_train,
             infer=suite_infer,
             export=suite_export,
             input=suite_input,
             eval=suite_eval,
             coco_shapes=suite_coco_shapes)
  for suite in suites:
    print(f"== suite {suite}", flush=True)
    fns[suite](log_dir, results)
    if FLAGS.json:  # after every suite: a later failure keeps what was measured
      with open(FLAGS.json, "w") as f:
        json.dump(results, f, indent=1)
  from benchmarks.report import markdown
  table = markdown(results)
  print(table)
  if FLAGS.markdown:
    with open(FLAGS.markdown, "w") as f:
      f.write(table)


if __name__ == "__main__":
  flags.DEFINE_string("suite", "all", "all, or comma-separated suites: " + ", ".join(SUITES))
  flags.DEFINE_integer("size", 512, "Square padded input size (both models).")
  flags.DEFINE_integer("batch", 2, "Images per step / per inference call.")
  flags.DEFINE_integer("reps", 3, "Alternating repetitions (the median is reported).")
  flags.DEFINE_integer("steps", 1, "Calls per repetition (train, infer, export, eval).")
  flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"],
                    "Compute precision of both models (variables stay float32).")
  flags.DEFINE_bool("jit_compile", False, "Compile our training step with XLA.")
  flags.DEFINE_enum("our_bn", "BN", ["BN", "SyncBN"], "Our BN config compared with theirs.")
  flags.DEFINE_integer("input_batches", 20, "Input batches per repetition (input).")
  flags.DEFINE_integer("eval_images", 16, "Validation images per evaluation pass (eval).")
  flags.DEFINE_string("json", None, "Write every figure and ratio here.")
  flags.DEFINE_string("markdown", None, "Write the results table here.")
  flags.DEFINE_string("worker_logs", None, "Worker logs (default: a new temporary directory).")
  app.run(main)
