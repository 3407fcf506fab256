"""Two worker processes on loopback (MultiWorkerMirroredStrategy through the local launcher)
train exactly as one process on the same global batch."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from rethink_tf import config
from rethink_tf.tools import launch_local
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer

from conftest import REPO_ROOT

ARGS = [
    "--gin_file=gin_configs/testing/tiny.gin", "--gin_param=TrainConfig.stop_at_step=3",
    "--gin_param=TrainConfig.checkpoint_every_steps=1"
]
TRAIN = [sys.executable, "-m", "rethink_tf.train"]


def _start_from(model_dir, start_prefix):
  """Both runs resume from the same step-0 checkpoint (identical weights and optimizer)."""
  os.makedirs(model_dir)
  for name in os.listdir(os.path.dirname(start_prefix)):
    if name.startswith("ckpt-0."):
      tf.io.gfile.copy(os.path.join(os.path.dirname(start_prefix), name),
                       os.path.join(model_dir, name))
  with open(os.path.join(model_dir, "checkpoint"), "w") as f:
    f.write('model_checkpoint_path: "ckpt-0"\nall_model_checkpoint_paths: "ckpt-0"\n')


def test_two_workers_equal_one_process(tmp_path):
  config.parse_gin(["gin_configs/testing/tiny.gin"])
  init = detection_trainer(str(tmp_path / "init"), distribute.get_strategy("one_device"))
  start = init.checkpointer.manager.save(checkpoint_number=0)
  single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
  _start_from(single_dir, start)
  _start_from(multi_dir, start)

  single = subprocess.run(TRAIN + ARGS + [f"--model_dir={single_dir}"],
                          cwd=REPO_ROOT,
                          capture_output=True,
                          text=True,
                          timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]
  assert "resumed from" in single.stdout
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  multi = subprocess.run([
      sys.executable, "-m", "rethink_tf.tools.launch_local", "--num_workers=2", "--", *TRAIN, *ARGS,
      f"--model_dir={multi_dir}"
  ],
                         cwd=REPO_ROOT,
                         capture_output=True,
                         text=True,
                         timeout=900,
                         env=env)
  with open(tmp_path / "multi.log", "w") as f:
    f.write(multi.stdout + multi.stderr)
  assert multi.returncode == 0, (multi.stdout + multi.stderr)[-4000:]
  for i in (0, 1):
    assert f"[worker {i}] resumed from" in multi.stdout
  assert "2 replica(s)" in multi.stdout
  # Only the chief wrote to model_dir; the other worker's scratch checkpoint is gone.
  assert not [n for n in os.listdir(multi_dir) if n.startswith(".worker")]

  assert tf.train.latest_checkpoint(multi_dir).endswith("ckpt-3")
  # After one step: equal to float tolerance, every variable.
  a, b = _load(single_dir, 1), _load(multi_dir, 1)
  assert len(a) > 50 and a.keys() == b.keys()
  for name, x in a.items():
    np.testing.assert_allclose(b[name],
                               x,
                               rtol=1e-5,
                               atol=max(1e-5 * np.abs(x).max(), 1e-7),
                               err_msg=name)
  # After three steps: the same training, measured on the whole update (rounding differences,
  # e.g. convs over a batch of 1 vs 2, compound over steps; per-element relative checks would
  # flag parameters whose gradients nearly cancel, such as GN betas still at ~1e-6).
  a, b, a0 = _load(single_dir, 3), _load(multi_dir, 3), _load(single_dir, 0)
  diff = np.sqrt(sum(np.sum((b[n] - a[n])**2) for n in a))
  update = np.sqrt(sum(np.sum((a[n] - a0[n])**2) for n in a))
  assert update > 0 and diff <= 1e-3 * update, (diff, update)


def _load(model_dir, step):
  """Model variables of checkpoint `step` (optimizer slots excluded), and check its step."""
  reader = tf.train.load_checkpoint(os.path.join(model_dir, f"ckpt-{step}"))
  assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == step
  return {
      n: reader.get_tensor(n)
      for n in reader.get_variable_to_shape_map()
      if n.startswith("model/") and "OPTIMIZER_SLOT" not in n
  }


def test_tf_configs_name_every_worker_and_its_index():
  cfgs = launch_local.tf_configs(3)
  workers = cfgs[0]["cluster"]["worker"]
  assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
  assert [c["task"] for c in cfgs] == [{"type": "worker", "index": i} for i in range(3)]
  assert all(c["cluster"] == cfgs[0]["cluster"] for c in cfgs)
