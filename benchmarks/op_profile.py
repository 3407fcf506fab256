"""Op-level time breakdown of a TF profiler trace (XPlane), without TensorBoard.

`summarize(logdir)` reads the newest `*.xplane.pb` under `logdir` and sums the host-CPU op
events by op type and by name scope.
"""
import collections
import glob
import os

from tensorflow.tsl.profiler.protobuf import xplane_pb2


def load(logdir):
  files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb under {logdir}")
  space = xplane_pb2.XSpace()
  with open(files[-1], "rb") as f:
    space.ParseFromString(f.read())
  return space


def op_events(space):
  """Yields (name, type, seconds) for every TF op event on the host plane."""
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    meta = plane.event_metadata
    for line in plane.lines:
      for ev in line.events:
        name = meta[ev.metadata_id].name
        if ":" not in name or name.startswith("$"):
          continue
        op_name, _, op_type = name.rpartition(":")
        op_name, op_type = op_name.strip(), op_type.strip()
        yield op_name, op_type, ev.duration_ps * 1e-12


def _scope(op_name: str, depth: int) -> str:
  parts = [p for p in op_name.split("/") if not p.startswith(("while", "body", "_", "cond"))]
  return "/".join(parts[:depth]) or op_name


def breakdown(space, depth: int = 2):
  """(seconds by op type, seconds by name scope) of the TF ops in a trace; function-call and
  executor wrapper events (whose time is their ops' time) are left out."""
  wrappers = ("Process", "Run", "EagerLocalExecute", "KernelAndDeviceFunc", "ExecutorState",
              "PartitionedCall", "StatefulPartitionedCall", "While", "If", "StatelessIf",
              "StatelessWhile")
  by_type, by_scope = collections.Counter(), collections.Counter()
  for name, op_type, seconds in op_events(space):
    if op_type in wrappers or op_type.startswith("__inference") or name.startswith("__inference"):
      continue
    by_type[op_type] += seconds
    by_scope[_scope(name, depth)] += seconds
  return by_type, by_scope


def main():
  r"""python -m benchmarks.op_profile '{"job": "infer", "impl": "ours", "size": 512,
  "batch": 2, "norm": "BN"}' [LOGDIR]: warm up, trace one call, print the breakdown."""
  import json
  import sys
  import tempfile
  import time

  import tensorflow as tf

  from benchmarks.worker import build
  spec = json.loads(sys.argv[1])
  logdir = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="profile_")
  work, _ = build(spec)
  for _ in range(2):
    work()
  tf.profiler.experimental.start(logdir)
  t = time.perf_counter()
  work()
  wall = time.perf_counter() - t
  tf.profiler.experimental.stop()
  by_type, by_scope = breakdown(load(logdir), spec.get("depth", 3))
  total = sum(by_type.values())
  print(f"traced call: {wall:.2f} s wall, {total:.2f} s summed over ops (2 cores run ops "
        f"in parallel); trace in {logdir}")
  for title, counter in (("op type", by_type), ("name scope", by_scope)):
    print(f"\n{'seconds':>8} {'share':>6}  {title}")
    for key, s in counter.most_common(spec.get("top", 25)):
      print(f"{s:8.3f} {s / total:6.1%}  {key}")


if __name__ == "__main__":
  main()
