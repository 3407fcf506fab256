"""The Kubernetes example runs an existing preset with the multi-worker strategy."""

import os

import yaml

from conftest import REPO_ROOT


def test_tfjob_runs_a_preset_on_multi_worker_mirrored():
  job = yaml.safe_load(open(os.path.join(REPO_ROOT, "deploy", "tfjob.yaml")))
  assert job["kind"] == "TFJob" and job["apiVersion"].startswith("kubeflow.org/")
  worker = job["spec"]["tfReplicaSpecs"]["Worker"]
  assert worker["replicas"] >= 2
  command = worker["template"]["spec"]["containers"][0]["command"]
  assert command[:3] == ["python", "-m", "rethink_tf.train"]
  assert "--strategy=multi_worker_mirrored" in command
  gin_files = [c.split("=", 1)[1] for c in command if c.startswith("--gin_file=")]
  assert gin_files and all(os.path.exists(os.path.join(REPO_ROOT, f)) for f in gin_files)
  assert any(c.startswith("--model_dir=") for c in command)
