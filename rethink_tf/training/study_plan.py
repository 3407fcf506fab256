"""The miniature study's configuration and run plan (pure Python: no TensorFlow).

The study trains, for each init (scratch, pretrained) and seed, one detector per schedule
length (multiples of the study's "1x"), plus a less-data arm at two training-set sizes. Runs of
one init and seed share their constant-LR prefix: every schedule has the same warmup and the
same LR until its first decay, so a shorter schedule is the longest run's checkpoint taken just
before that first decay, continued with its own decays. With the same seed that checkpoint is
what an independent run of the shorter schedule computes up to that step (same initialization,
same examples in the same order), and it saves about a third of the training time.

`plan()` lists the training segments in an order that runs them one after the other;
`dependencies()` says which segments each must wait for, so that independent chains (another
seed, the other init, the less-data runs) can run side by side.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import gin

from rethink_tf.training.schedules import ITERS_1X, REFERENCE_BATCH, nx_schedule

INITS = ("scratch", "pretrained")
PRETRAIN = "pretrain"  # the classification stage every pretrained segment waits for


@gin.configurable
class StudyConfig:
  """What the miniature study runs. Bound by gin_configs/demo/study.gin.

  Args:
    pretrain_gin_files: gin files of the pre-training stage (`python -m rethink_tf.pretrain`).
    pretrain_params: extra bindings of that stage (e.g. a shorter one for `--quick`).
    detection_gin_files: gin files of the detector without init and schedule (base, norm,
      data, run); the study adds the init file and binds the schedule.
    pretrained_schedules: schedule lengths of the pretrained arm, in multiples of the study's
      1x; the longest should be past the arm's plateau.
    scratch_schedules: those of the scratch arm (the paper's claim needs scratch given more
      iterations: one schedule beyond the pretrained arm's longest).
    steps_per_x: training steps of the study's 1x at `global_batch_size` (need not be whole:
      266.67 makes 3x the demo's 800 steps).
    global_batch_size: images per step.
    base_lr_per_16, warmup_steps: the LR rule (linear scaling) and warmup of every run.
    eval_every_steps: evaluation period (every run is also evaluated at its end).
    seeds: seeds of the full-data runs (each seed is its own chain of runs).
    single_seed_below: schedules shorter than this many x run with `seeds[0]` only: their
      gaps are many times the seed spread, while the decisive points (the pretrained arm's
      plateau, where scratch catches up, the reference) run every seed. 1: every schedule runs
      every seed.
    every_seed_longest: when set, only each arm's `every_seed_longest` longest schedules (of
      those from `single_seed_below` on) run every seed, the others `seeds[0]` only: the
      plateau and the one-beyond schedule decide the answer, and with the shorter schedules
      forking off each seed's longest run a second seed costs its longest run plus one short
      tail per extra schedule. None: every schedule from `single_seed_below` on.
    reference_schedule, reference_seeds: the scratch arm also runs this schedule with these
      seeds (the demo configuration: 3x = the demo's schedule), for the row beside
      `reference`.
    reference: {"label", "box_ap", "mask_ap"}: a peer's AP for the reference configuration (on
      the same data with the same recipe), printed beside ours; None for no row.
    less_data_num_train: training-set sizes of the less-data arm (the full set has
      `SyntheticDataset.num_train`); () disables the arm.
    less_data_schedules: its schedules, each run from scratch and pretrained.
    less_data_seeds: its seeds.
    less_data_eval_every_steps: its evaluation period (None: `eval_every_steps`); its runs
      are single segments, each also evaluated at its end.
    catch_up_tolerance: the plateau criterion: an arm has stopped improving when a longer
      schedule gains less than this (AP in [0, 1]; 0.01 is one AP point).
  """

  def __init__(self,
               pretrain_gin_files: Sequence[str] = ("gin_configs/demo/pretrain.gin",),
               pretrain_params: Sequence[str] = (),
               detection_gin_files: Sequence[str] = ("gin_configs/base/mask_rcnn_small.gin",
                                                     "gin_configs/norm/gn.gin",
                                                     "gin_configs/data/synthetic.gin",
                                                     "gin_configs/run/cpu.gin"),
               pretrained_schedules: Sequence[int] = (1, 2, 3),
               scratch_schedules: Sequence[int] = (1, 2, 3, 4),
               steps_per_x: float = 150,
               global_batch_size: int = 8,
               base_lr_per_16: float = 0.08,
               warmup_steps: int = 50,
               eval_every_steps: int = 50,
               seeds: Sequence[int] = (0,),
               single_seed_below: int = 1,
               every_seed_longest: Optional[int] = None,
               reference_schedule: Optional[int] = None,
               reference_seeds: Sequence[int] = (),
               reference: Optional[Dict] = None,
               less_data_num_train: Sequence[int] = (200,),
               less_data_schedules: Sequence[int] = (2,),
               less_data_seeds: Sequence[int] = (0,),
               less_data_eval_every_steps: Optional[int] = None,
               catch_up_tolerance: float = 0.01):
    self.pretrain_gin_files = tuple(pretrain_gin_files)
    self.pretrain_params = tuple(pretrain_params)
    self.detection_gin_files = tuple(detection_gin_files)
    self.arm_schedules = {
        "scratch": tuple(sorted(scratch_schedules)),
        "pretrained": tuple(sorted(pretrained_schedules))
    }
    self.steps_per_x = steps_per_x
    self.global_batch_size = global_batch_size
    self.base_lr_per_16 = base_lr_per_16
    self.warmup_steps = warmup_steps
    self.eval_every_steps = eval_every_steps
    self.seeds = tuple(seeds)
    self.single_seed_below = single_seed_below
    self.every_seed_longest = every_seed_longest
    self.reference_schedule = reference_schedule
    self.reference_seeds = tuple(reference_seeds) if reference_schedule else ()
    self.reference = dict(reference) if reference else None
    self.less_data_num_train = tuple(sorted(less_data_num_train, reverse=True))
    self.less_data_schedules = tuple(less_data_schedules) if self.less_data_num_train else ()
    self.less_data_seeds = tuple(less_data_seeds)
    self.less_data_eval_every_steps = less_data_eval_every_steps or eval_every_steps
    self.catch_up_tolerance = catch_up_tolerance

  @property
  def schedules(self) -> Tuple[int, ...]:
    """Every full-data schedule length of either arm, shortest first."""
    return tuple(sorted(set(self.arm_schedules["scratch"]) | set(self.arm_schedules["pretrained"])))

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

  def seeds_of(self, init: str, num_x: int) -> Tuple[int, ...]:
    """Seeds of the full-data run of `init` at `num_x` (empty when the arm does not run it)."""
    every = num_x >= self.single_seed_below and (
        self.every_seed_longest is None or
        num_x in self.arm_schedules[init][-self.every_seed_longest:])
    seeds = self.seeds if every else self.seeds[:1]
    seeds = seeds if num_x in self.arm_schedules[init] else ()
    if init == "scratch" and num_x == self.reference_schedule:
      seeds += tuple(s for s in self.reference_seeds if s not in seeds)
    return seeds


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
  seed: int = 0


def run_name(init: str, num_x: int, num_train: Optional[int] = None, seed: int = 0) -> str:
  return f"{init}_{num_x}x" + (f"_{num_train}img" if num_train else "") + f"_seed{seed}"


def validate(cfg: StudyConfig):
  """Raises ValueError when a schedule cannot share the longest one's prefix: its first decay
  must come after the warmup."""
  if not cfg.arm_schedules["scratch"] or not cfg.arm_schedules["pretrained"] or not cfg.seeds:
    raise ValueError("StudyConfig: each arm needs at least one schedule and one seed")
  for n in cfg.schedules + cfg.less_data_schedules + (cfg.reference_schedule or 1,):
    s = cfg.schedule(n)
    if s.boundaries[0] <= s.warmup_steps:
      raise ValueError(f"the {n}x schedule decays at step {s.boundaries[0]}, within the "
                       f"{s.warmup_steps}-step warmup; raise StudyConfig.steps_per_x")


def fork_step(cfg: StudyConfig, num_x: int) -> int:
  """The last step at which the `num_x` schedule equals the longest one: its first decay."""
  return cfg.schedule(num_x).boundaries[0]


def plan(cfg: StudyConfig) -> List[Segment]:
  """The training segments, in an order that can run sequentially: for each init and seed, the
  longest schedule runs up to each shorter schedule's first decay, which then forks off and
  finishes; then the less-data arm."""
  validate(cfg)
  segments = []
  for init in INITS:
    seeds = sorted({s for n in cfg.schedules for s in cfg.seeds_of(init, n)})
    for seed in seeds:
      lengths = [n for n in cfg.schedules if seed in cfg.seeds_of(init, n)]
      main = run_name(init, lengths[-1], seed=seed)
      for n in lengths[:-1]:
        segments.append(Segment(main, init, lengths[-1], None, fork_step(cfg, n), seed=seed))
        segments.append(
            Segment(run_name(init, n, seed=seed), init, n, None, fork_from=main, seed=seed))
      segments.append(Segment(main, init, lengths[-1], None, seed=seed))
  for num_train in cfg.less_data_num_train:
    for n in cfg.less_data_schedules:
      for init in INITS:
        for seed in cfg.less_data_seeds:
          segments.append(Segment(run_name(init, n, num_train, seed), init, n, num_train,
                                  seed=seed))
  return segments


def dependencies(segments: Sequence[Segment]) -> List[Tuple[int, ...]]:
  """For each segment, the indices of the segments it waits for (-1: the pre-training stage).
  A segment follows the previous segment of its run; a fork follows the segment that brought
  its source run to the fork step (whose directory it copies)."""
  deps: List[Tuple[int, ...]] = []
  last_of_run: Dict[str, int] = {}
  for i, seg in enumerate(segments):
    d = []
    if seg.fork_from is not None:
      d.append(last_of_run[seg.fork_from])
    if seg.run in last_of_run:
      d.append(last_of_run[seg.run])
    if seg.init == "pretrained" and not d:
      d.append(-1)
    deps.append(tuple(d))
    last_of_run[seg.run] = i
  return deps


def segment_steps(cfg: StudyConfig, segments: Sequence[Segment]) -> List[int]:
  """Training steps of each segment of a full run of the plan (a fork starts at its source's
  step)."""
  position: Dict[Optional[str], int] = {}
  steps: List[int] = []
  for seg in segments:
    start = position.get(seg.run, position.get(seg.fork_from, 0))
    end = seg.stop_at or cfg.schedule(seg.num_x).total_steps
    steps.append(end - start)
    position[seg.run] = end
  return steps


def chain_steps(steps: Sequence[int], deps: Sequence[Tuple[int, ...]]) -> List[int]:
  """For each segment, the training steps of the longest chain it starts: its own and those of
  the longest sequence of segments waiting on it. Starting the longest chains first keeps both
  workers busy to the end (starting them in plan order left one idle for the last run of the
  longest chain)."""
  longest = list(steps)
  for i in reversed(range(len(steps))):  # dependents come after what they wait for
    for d in deps[i]:
      if d >= 0:
        longest[d] = max(longest[d], steps[d] + longest[i])
  return longest


def training_steps(cfg: StudyConfig) -> int:
  """Training steps of the whole plan (a fork's copied prefix counted once)."""
  return sum(segment_steps(cfg, plan(cfg)))


def gin_params(cfg: StudyConfig, segment: Segment, pretrained_checkpoint: str) -> List[str]:
  """The bindings `rethink_tf.train` gets for a segment (after the study's gin files)."""
  every = cfg.less_data_eval_every_steps if segment.num_train else cfg.eval_every_steps
  params = [
      f"nx_schedule.num_x = {segment.num_x}",
      f"nx_schedule.iteration_scale = {cfg.iteration_scale!r}",
      f"nx_schedule.base_lr_per_16 = {cfg.base_lr_per_16!r}",
      f"nx_schedule.warmup_steps = {cfg.warmup_steps}",
      f"TrainConfig.global_batch_size = {cfg.global_batch_size}",
      f"TrainConfig.eval_every_steps = {every}", f"TrainConfig.checkpoint_every_steps = {every}",
      f"TrainConfig.seed = {segment.seed}", f"TrainConfig.stop_at_step = {segment.stop_at}"
  ]
  if segment.init == "pretrained":
    params.append(f"init_config.checkpoint = {pretrained_checkpoint!r}")
  if segment.num_train:
    params.append(f"SyntheticDataset.num_train = {segment.num_train}")
  return params


def init_gin_file(init: str) -> str:
  return f"gin_configs/init/{init}.gin"


def schedule_runs(cfg: StudyConfig) -> List[Tuple[str, str, int, int]]:
  """(run name, init, num_x, seed) of the full-data runs, shortest schedule first."""
  return [(run_name(init, n, seed=s), init, n, s)
          for n in cfg.schedules
          for init in INITS
          for s in cfg.seeds_of(init, n)]
