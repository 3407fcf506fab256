"""absl flags shared by the entry points."""

from absl import flags

from rethink_tf.training.distribute import STRATEGIES


def define_common_flags():
  flags.DEFINE_multi_string("gin_file", [], "Gin files (repeatable); later ones override.")
  flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. TrainConfig.seed=1.")
  flags.DEFINE_string("model_dir", None, "Checkpoints, summaries and metrics of the run.")
  flags.DEFINE_enum("strategy", "one_device", list(STRATEGIES), "tf.distribute strategy.")
  flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
  flags.DEFINE_bool(
      "allow_config_change", False, "Resume a model_dir whose run was trained "
      "with a different operative config (the changes are recorded).")
  flags.DEFINE_integer(
      "cpu_devices", 0, "Split the CPU into N logical devices (testing "
      "--strategy=mirrored without accelerators).")
