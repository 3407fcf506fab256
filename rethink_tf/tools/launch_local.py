r"""Runs a multi-worker job on this machine: N worker processes on loopback ports.

  python -m rethink_tf.tools.launch_local --num_workers=2 -- \
      python -m rethink_tf.train --gin_file=gin_configs/testing/tiny.gin --model_dir=/tmp/mw

Each worker gets the command with `--strategy=multi_worker_mirrored` appended and a
`TF_CONFIG` naming every worker at 127.0.0.1:<free port> and its own index (worker 0 is the
chief). Output lines are prefixed with `[worker i]`. SIGTERM and SIGINT are forwarded to every
worker (so preemption handling can be tried locally). Exits with the first non-zero worker
exit code, or 0. On a real cluster the scheduler sets `TF_CONFIG` instead (docs/distributed.md).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import List, Sequence

from absl import app, flags, logging

from rethink_tf import console

FLAGS = flags.FLAGS


def free_ports(n: int) -> List[int]:
  """n distinct free TCP ports on loopback (bound and released; the OS does not reuse them
  immediately)."""
  socks, ports = [], []
  for _ in range(n):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    ports.append(s.getsockname()[1])
  for s in socks:
    s.close()
  return ports


def tf_configs(num_workers: int) -> List[dict]:
  workers = [f"127.0.0.1:{p}" for p in free_ports(num_workers)]
  return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
          for i in range(num_workers)]


def _pump(stream, prefix):
  for line in iter(stream.readline, ""):
    sys.stdout.write(f"{prefix} {line}")
    sys.stdout.flush()


def _wait_awake(proc: subprocess.Popen) -> int:
  """proc's exit code, waking every 0.2 s: a signal the kernel hands to another thread (an
  output pump) runs its Python handler only when the main thread runs, and a plain wait()
  would hold it back until a worker exits."""
  while True:
    try:
      return proc.wait(timeout=0.2)
    except subprocess.TimeoutExpired:
      pass


def launch(command: Sequence[str], num_workers: int, env=None) -> int:
  """Starts the workers, waits for all of them; returns the job's exit code."""
  procs, pumps = [], []
  for i, cfg in enumerate(tf_configs(num_workers)):
    worker_env = dict(env if env is not None else os.environ, TF_CONFIG=json.dumps(cfg))
    proc = subprocess.Popen(list(command) + ["--strategy=multi_worker_mirrored"],
                            env=worker_env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True)
    procs.append(proc)
    pump = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {i}]"), daemon=True)
    pump.start()
    pumps.append(pump)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    codes = [_wait_awake(p) for p in procs]
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  for pump in pumps:
    pump.join(timeout=5)
  failed = [(i, c) for i, c in enumerate(codes) if c]
  for i, c in failed:
    logging.error(f"worker {i} exited with code {c}")
  return failed[0][1] if failed else 0


def main(argv):
  console.show_library_logs()
  command = argv[1:]
  if not command:
    sys.exit("usage: python -m rethink_tf.tools.launch_local --num_workers=N -- COMMAND ...")
  sys.exit(launch(command, FLAGS.num_workers))


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-launch-local`)."""
  flags.DEFINE_integer("num_workers", 2, "Worker processes to start.")
  app.run(main)


if __name__ == "__main__":
  console_main()
