r"""One benchmark contender in its own process, driven over stdin/stdout by `benchmarks.run`.

  python -m benchmarks.worker '{"job": "train", "impl": "ours", "size": 512, "batch": 2, ...}'

Builds the contender, calls it `warmup` times (the first call traces), prints a `BENCH {json}`
line with the build and first-call times, then answers commands read from stdin:
  run N   -> times N calls, prints {"seconds": mean seconds per call}
  quit    -> prints {"peak_rss_mb": this process's peak resident memory} and exits.
A separate process per contender keeps each one's peak memory its own and lets the runner
alternate contenders (A, B, A, B, ...) so machine noise hits both.
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PREFIX = "BENCH "


def emit(**record):
  print(PREFIX + json.dumps(record), flush=True)


def build(spec):
  """spec -> (work callable, info dict)."""
  from benchmarks import contenders as c
  job, impl = spec["job"], spec["impl"]
  size, batch = spec["size"], spec["batch"]
  precision = spec.get("precision", "float32")
  if job == "train" and impl == "ours":
    return c.our_train(size, batch, spec["norm"], precision, spec.get("jit_compile", False))
  if job == "train" and impl == "model_garden":
    return c.mg_train(size, batch, c.synthetic_train_pattern(), precision)
  if job == "infer" and impl == "ours":
    return c.our_infer(size, batch, spec["norm"], precision)
  if job == "infer" and impl == "model_garden":
    return c.mg_infer(size, batch, precision)
  if job == "input" and impl == "ours":
    return c.our_input(size, batch, spec["norm"])
  if job == "input" and impl == "model_garden":
    return c.mg_input(size, batch, c.synthetic_train_pattern())
  if job == "eval" and impl == "ours":
    return c.our_eval(size, batch, spec["images"], spec["norm"])
  if job == "eval" and impl == "model_garden":
    return c.mg_eval(size, batch, spec["images"])
  if job == "coco_train" and impl == "ours":
    return c.our_coco_train(batch, spec["canvas"], spec["norm"])
  if job == "coco_train" and impl == "model_garden":
    return c.mg_coco_train(batch)
  if job == "coco_infer" and impl == "ours":
    return c.our_coco_infer(batch, spec["canvas"], spec["norm"])
  if job == "coco_infer" and impl == "model_garden":
    return c.mg_infer(c.MG_COCO_INPUT, batch)
  if job == "saved_model":
    return c.saved_model_call(spec["path"], size, batch, spec.get("photo"))
  if job == "matmul":
    import tensorflow as tf

    from benchmarks import flops
    rates = {d: flops.matmul_flops_per_second(getattr(tf, d)) for d in ("float32", "bfloat16")}
    return (lambda: None), {"matmul_flops_per_s": rates}
  if job == "export":
    path = (c.our_export(size, batch, spec["export_dir"], spec["norm"])
            if impl == "ours" else c.mg_export(size, batch, spec["export_dir"]))
    return (lambda: None), {"path": path}
  if job == "flops" and impl == "ours":
    from benchmarks import flops
    trainer = c.our_trainer(size, batch, spec["norm"], precision)
    return (lambda: None), {
        "train_forward_flops":
            flops.our_train_forward_flops(trainer.model, batch, size,
                                          trainer.task.input_cfg.max_instances,
                                          trainer.task.input_cfg.mask_crop_size)
    }
  raise ValueError(f"unknown benchmark job {job!r} for {impl!r}")


def main():
  spec = json.loads(sys.argv[1])
  t = time.perf_counter()
  work, info = build(spec)
  build_s = time.perf_counter() - t
  first = []
  for _ in range(spec.get("warmup", 1)):
    t = time.perf_counter()
    work()
    first.append(time.perf_counter() - t)
  info = {k: v for k, v in info.items() if isinstance(v, (int, float, str, dict, list))}
  emit(event="ready", build_s=build_s, first_call_s=first[0] if first else None, **info)
  for line in sys.stdin:
    cmd = line.split()
    if cmd and cmd[0] == "run":
      n = int(cmd[1])
      t = time.perf_counter()
      for _ in range(n):
        work()
      emit(event="timed", seconds=(time.perf_counter() - t) / n)
    elif cmd and cmd[0] == "quit":
      break
  emit(event="done", peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
  main()
