"""The local multi-worker launcher forwards a SIGTERM to every worker, wherever it lands."""

import signal
import sys
import threading
import time

from rethink_tf.tools import launch_local

WORKER = r'''
import json, os, signal, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as the trainer: stop cleanly
open(f"{sys.argv[1]}.{index}", "w").close()
time.sleep(30)
sys.exit(5)  # never signalled
'''


def test_a_sigterm_that_lands_on_an_output_pump_thread_reaches_every_worker(tmp_path):
  # The kernel may hand a process-directed signal to any thread of the launcher, here one that
  # is not the main thread; the workers must still be told while they run (each waits 30 s for
  # it, then exits 5).
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  started = tmp_path / "started"

  def deliver():
    while not all((tmp_path / f"started.{i}").exists() for i in (0, 1)):
      time.sleep(0.02)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

  threading.Thread(target=deliver, daemon=True).start()
  handler = signal.getsignal(signal.SIGTERM)
  assert launch_local.launch([sys.executable, str(script), str(started)], num_workers=2) == 0
  assert signal.getsignal(signal.SIGTERM) is handler  # the launcher's handler is gone
