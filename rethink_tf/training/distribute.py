"""Strategy creation; only entry points call this (the model and loop never do)."""

from typing import Optional

import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "tpu")


def get_strategy(name: str = "one_device", tpu: Optional[str] = None) -> tf.distribute.Strategy:
  """Returns the tf.distribute strategy called `name`.

  one_device: the first GPU, else the CPU. mirrored: every local GPU (or every logical CPU
  device when there is no GPU). multi_worker_mirrored: TF_CONFIG-driven cluster. tpu:
  `tpu` is the TPU name or grpc address ("" / "local" for a TPU VM).
  """
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker_mirrored":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu="" if tpu in (None, "local") else tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"--strategy={name!r} is not one of {STRATEGIES}")


def split_cpu(num_devices: int):
  """Splits the physical CPU into `num_devices` logical devices (tests of multi-replica code).

  Must run before TensorFlow initializes its devices.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def worker_info(strategy: tf.distribute.Strategy):
  """(is_chief, task_type, task_id) of this process; single-process strategies are chief.

  The chief of a multi-worker job is task "chief", or "worker" 0 when the cluster has no
  chief task (TF_CONFIG as Kubeflow's TFJob and our local launcher write it).
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return True, None, None
  task_type, task_id = resolver.task_type, resolver.task_id
  if not task_type:
    return True, None, None
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  is_chief = task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)
  return is_chief, task_type, task_id


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return worker_info(strategy)[1] is not None
