"""The miniature study's configuration and run plan (pure Python: no TensorFlow).

The study trains, for each init (scratch, pretrained), one detector per schedule length
(multiples of the study's "1x") plus a less-data arm. Runs of one init share their
constant-LR prefix: every schedule has the same warmup and the same LR until its first decay,
so a shorter schedule is the longest run's checkpoint taken just before that first decay,
continued with its own decays. With the same seed that checkpoint is what an independent run
of the shorter schedule computes up to that step (same initialization, same examples in the
same order), and it saves about a third of the training time. `plan()` lists the training
segments in the order they run.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import gin

from rethink_tf.training.schedules import ITERS_1X, REFERENCE_BATCH, nx_schedule

INITS = ("scratch", "pretrained")


@gin.configurable
class StudyConfig:
  """What the miniature study runs. Bound by gin_configs/demo/study.gin.

  Args:
    pretrain_gin_files: gin files of the pre-training stage (`python -m rethink_tf.pretrain`).
    detection_gin_files: gin files of the detector without init and schedule (base, norm,
      data, run); the study adds the init file and binds the schedule.
    schedules: schedule lengths, in multiples of the study's 1x.
    steps_per_x: training steps of the study's 1x at `global_batch_size`.
    global_batch_size: images per step.
    base_lr_per_16, warmup_steps: the LR rule (linear scaling) and warmup of every run.
    eval_every_steps: evaluation period (every run is also evaluated at its end).
    less_data_num_train: training images of the less-data arm (the full set has
      `SyntheticDataset.num_train`); 0 disables the arm.
    less_data_schedules: schedules of the less-data arm, each run from scratch and pretrained.
    catch_up_tolerance: scratch "catches up" when its AP is at least the pretrained AP minus
      this (AP in [0, 1]; 0.01 is one AP point).
    seed: the seed of every detection run.
  """

  def __init__(self,
               pretrain_gin_files: Sequence[str] = ("gin_configs/demo/pretrain.gin",),
               detection_gin_files: Sequence[str] = ("gin_configs/base/mask_rcnn_small.gin",
                                                     "gin_configs/norm/gn.gin",
                                                     "gin_configs/data/synthetic.gin",
                                                     "gin_configs/run/cpu.gin"),
               schedules: Sequence[int] = (1, 2, 3, 4),
               steps_per_x: int = 150,
               global_batch_size: int = 8,
               base_lr_per_16: float = 0.08,
               warmup_steps: int = 50,
               eval_every_steps: int = 50,
               less_data_num_train: int = 200,
               less_data_schedules: Sequence[int] = (2,),
               catch_up_tolerance: float = 0.01,
               seed: int = 0):
    self.pretrain_gin_files = tuple(pretrain_gin_files)
    self.detection_gin_files = tuple(detection_gin_files)
    self.schedules = tuple(sorted(schedules))
    self.steps_per_x = steps_per_x
    self.global_batch_size = global_batch_size
    self.base_lr_per_16 = base_lr_per_16
    self.warmup_steps = warmup_steps
    self.eval_every_steps = eval_every_steps
    self.less_data_num_train = less_data_num_train
    self.less_data_schedules = tuple(less_data_schedules) if less_data_num_train else ()
    self.catch_up_tolerance = catch_up_tolerance
    self.seed = seed

  @property
  def iteration_scale(self) -> float:
    """`nx_schedule.iteration_scale` that makes 1x = `steps_per_x` steps at this batch."""
    return self.steps_per_x / (ITERS_1X * REFERENCE_BATCH / self.global_batch_size)

  def schedule(self, num_x: int):
    return nx_schedule(num_x=num_x,
                       global_batch_size=self.global_batch_size,
                       base_lr_per_16=self.base_lr_per_16,
                       iteration_scale=self.iteration_scale,
                       warmup_steps=self.warmup_steps)


@dataclasses.dataclass(frozen=True)
class Segment:
  """One training process: run `run` (directory name) up to `stop_at` (None: to the end),
  first copying `fork_from`'s directory when given."""
  run: str
  init: str
  num_x: int
  num_train: Optional[int]
  stop_at: Optional[int] = None
  fork_from: Optional[str] = None


def run_name(init: str, num_x: int, num_train: Optional[int] = None) -> str:
  return f"{init}_{num_x}x" + (f"_{num_train}img" if num_train else "")


def validate(cfg: StudyConfig):
  """Raises ValueError when a schedule cannot share the longest one's prefix: its first decay
  must come after the warmup."""
  if not cfg.schedules:
    raise ValueError("StudyConfig.schedules is empty")
  for n in cfg.schedules + cfg.less_data_schedules:
    s = cfg.schedule(n)
    if s.boundaries[0] <= s.warmup_steps:
      raise ValueError(f"the {n}x schedule decays at step {s.boundaries[0]}, within the "
                       f"{s.warmup_steps}-step warmup; raise StudyConfig.steps_per_x")


def fork_step(cfg: StudyConfig, num_x: int) -> int:
  """The last step at which the `num_x` schedule equals the longest one: its first decay."""
  return cfg.schedule(num_x).boundaries[0]


def plan(cfg: StudyConfig) -> List[Segment]:
  """The training segments, in order: for each init, the longest schedule runs up to each
  shorter schedule's first decay, which then forks off and finishes; then the less-data arm."""
  validate(cfg)
  segments = []
  longest = cfg.schedules[-1]
  for init in INITS:
    main = run_name(init, longest)
    for n in cfg.schedules[:-1]:
      segments.append(Segment(main, init, longest, None, stop_at=fork_step(cfg, n)))
      segments.append(Segment(run_name(init, n), init, n, None, fork_from=main))
    segments.append(Segment(main, init, longest, None))
  for n in cfg.less_data_schedules:
    for init in INITS:
      segments.append(
          Segment(run_name(init, n, cfg.less_data_num_train), init, n, cfg.less_data_num_train))
  return segments


def gin_params(cfg: StudyConfig, segment: Segment, pretrained_checkpoint: str) -> List[str]:
  """The bindings `rethink_tf.train` gets for a segment (after the study's gin files)."""
  params = [
      f"nx_schedule.num_x = {segment.num_x}",
      f"nx_schedule.iteration_scale = {cfg.iteration_scale!r}",
      f"nx_schedule.base_lr_per_16 = {cfg.base_lr_per_16!r}",
      f"nx_schedule.warmup_steps = {cfg.warmup_steps}",
      f"TrainConfig.global_batch_size = {cfg.global_batch_size}",
      f"TrainConfig.eval_every_steps = {cfg.eval_every_steps}",
      f"TrainConfig.checkpoint_every_steps = {cfg.eval_every_steps}",
      f"TrainConfig.seed = {cfg.seed}", f"TrainConfig.stop_at_step = {segment.stop_at}"
  ]
  if segment.init == "pretrained":
    params.append(f"init_config.checkpoint = {pretrained_checkpoint!r}")
  if segment.num_train:
    params.append(f"SyntheticDataset.num_train = {segment.num_train}")
  return params


def init_gin_file(init: str) -> str:
  return f"gin_configs/init/{init}.gin"


def schedule_runs(cfg: StudyConfig) -> List[Tuple[str, str, int]]:
  """(run name, init, num_x) of the full-data runs, shortest schedule first."""
  return [(run_name(init, n), init, n) for n in cfg.schedules for init in INITS]
