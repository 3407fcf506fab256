"""Training on landscape and portrait images: each canvas is one XLA-compiled program (the step
is traced once per canvas), and a resumed run continues as an uninterrupted one."""

import numpy as np

from rethink_tf import config
from rethink_tf.training import distribute
from rethink_tf.training.task import detection_trainer

# Landscape, portrait and near-square synthetic images; at short side 32 / long side 64 the
# canvases are 32 x 64, 64 x 32 and 64 x 64 (the last only for images left over in a block).
CANVAS_PARAMS = [
    "SyntheticDataset.image_sizes = [(48, 96), (96, 48), (72, 64)]", "InputConfig.short_side = 32",
    "InputConfig.max_long_side = 64", "InputConfig.canvas_block_steps = 4"
]


def _trainer(model_dir, *params):
  config.parse_gin(["gin_configs/testing/tiny.gin"], CANVAS_PARAMS + list(params))
  return detection_trainer(str(model_dir), distribute.get_strategy("one_device"))


def test_xla_step_is_compiled_once_per_canvas_and_resumes(tmp_path):
  trainer = _trainer(tmp_path / "run", "TrainConfig.jit_compile = True",
                     "TrainConfig.stop_at_step = 8", "TrainConfig.checkpoint_every_steps = 4")
  assert trainer.task.input_cfg.canvas_list() == [(32, 64), (64, 32), (64, 64)]
  seen = {
      tuple(b["images"].shape[1:3]) for _, b in zip(range(8),
                                                    trainer.task.dataset().__iter__())
  }
  assert {(32, 64), (64, 32)} <= seen
  trainer.train()
  assert trainer.completed and int(trainer.optimizer.iterations.numpy()) == 8
  # One trace (and XLA compilation of the replica step) per canvas the 8 steps used.
  assert trainer.task.per_canvas_step.experimental_get_tracing_count() == len(seen)

  # A restart at the checkpoint of step 4 sees the batches steps 5-8 saw.
  resumed = _trainer(tmp_path / "run", "TrainConfig.stop_at_step = 8")
  uninterrupted = [b for _, b in zip(range(8), resumed.task.dataset(start_step=0))]
  again = [b for _, b in zip(range(4), resumed.task.dataset(start_step=4))]
  for a, b in zip(uninterrupted[4:], again):
    for k in a:
      np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
