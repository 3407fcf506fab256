"""The miniature study's numbers read as the paper reads its figures (pure Python).

Every AP is a `Spread` over seeds: its mean and range. A gap between the arms is stated with
the seed spread (the larger of the two arms' ranges), and scratch is said to "come within the
spread" of pretrained only when the gap of the means is no larger than that spread: with one
seed the spread is zero and only an equal or higher AP counts.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class Spread:
  """APs of one configuration over seeds: `values` in seed order."""
  values: Tuple[float, ...]

  @property
  def mean(self) -> float:
    return sum(self.values) / len(self.values)

  @property
  def lo(self) -> float:
    return min(self.values)

  @property
  def hi(self) -> float:
    return max(self.values)

  @property
  def spread(self) -> float:
    """Range over seeds (max - min); 0 for one seed."""
    return self.hi - self.lo

  def __str__(self) -> str:
    if len(self.values) == 1:
      return f"{self.mean:.3f} (1 seed)"
    return f"{self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def spread_of(values: Sequence[Optional[float]]) -> Optional[Spread]:
  """A Spread of the values present (None when none is)."""
  vals = tuple(v for v in values if v is not None)
  return Spread(vals) if vals else None


def points(x: float) -> str:
  return f"{x * 100:+.1f}"


def margin(a: Spread, b: Spread) -> float:
  """The seed spread a gap between `a` and `b` is judged against."""
  return max(a.spread, b.spread)


def plateau(arm: Dict[int, Spread], tolerance: float) -> Optional[int]:
  """The shortest schedule after which no longer schedule adds `tolerance` or more to the
  mean AP; None when the longest schedule still gains (or there is nothing to compare)."""
  xs = sorted(arm)
  for i, n in enumerate(xs[:-1]):
    if all(arm[m].mean - arm[n].mean < tolerance for m in xs[i + 1:]):
      return n
  return None


def _fewer(scratch_steps: int, pretrained_steps: int) -> str:
  """How many times fewer iterations pretrained needed (or more, when it needed more)."""
  if pretrained_steps < scratch_steps:
    return f"{scratch_steps / pretrained_steps:.1f}x fewer"
  if pretrained_steps > scratch_steps:
    return f"{pretrained_steps / scratch_steps:.1f}x more"
  return "as many"


def reading(finals: Dict[str, Dict[int, Spread]],
            steps_of: Dict[int, int],
            metric: str,
            tolerance: float,
            pretrained_points: Sequence[Tuple[int, float]] = ()) -> List[str]:
  """Sentences read off the final APs `finals[init][num_x]` (seeds' Spreads) of one metric.

  steps_of: the iterations of each schedule. pretrained_points: (step, mean AP) of the
  pretrained arm's evaluations, to say at which iteration it first reached each scratch result
  (else its finals are used).
  """
  scratch, pre = finals["scratch"], finals["pretrained"]
  if not scratch or not pre:
    return [f"No {metric} to compare: the runs have no final evaluation."]
  out = []
  common = sorted(set(scratch) & set(pre))
  # Schedules run with one seed have no spread of their own: their gaps are stated beside the
  # largest spread of the schedules run with several.
  widest = max([a.spread for a in (*scratch.values(), *pre.values()) if len(a.values) > 1],
               default=None)
  for n in common:
    g = scratch[n].mean - pre[n].mean
    if len(scratch[n].values) > 1 or len(pre[n].values) > 1 or widest is None:
      spread = f"seed spread {margin(scratch[n], pre[n]) * 100:.1f}"
    else:
      spread = f"one seed each (the seed spread is at most {widest * 100:.1f} elsewhere)"
    out.append(f"At {n}x ({steps_of[n]} iterations) scratch has {metric} {scratch[n]} vs "
               f"pretrained {pre[n]}: {points(g)} points, {spread}.")
  # The pretrained arm's plateau.
  xs = sorted(pre)
  at = plateau(pre, tolerance)
  if at is None:
    out.append(f"The pretrained arm has not stopped improving within {xs[-1]}x: " +
               (f"{xs[-1]}x adds {points(pre[xs[-1]].mean - pre[xs[-2]].mean)} points over "
                f"{xs[-2]}x (the plateau needs less than {tolerance * 100:.0f})." if len(xs) >
                1 else "it has a single schedule."))
  else:
    gains = ", ".join(f"{m}x {points(pre[m].mean - pre[at].mean)}" for m in xs if m > at)
    out.append(f"The pretrained arm plateaus at {at}x ({steps_of[at]} iterations): no longer "
               f"schedule adds {tolerance * 100:.0f} point or more to its mean ({gains}).")
  best_x = max(xs, key=lambda n: pre[n].mean)
  best = pre[best_x]
  target_x = at if at is not None else best_x
  within = [n for n in sorted(scratch) if scratch[n].mean >= best.mean - margin(scratch[n], best)]
  if within:
    n = within[0]
    g, m = scratch[n].mean - best.mean, margin(scratch[n], best)
    # The first schedule that reaches the best pretrained result may already pass it by more
    # than the spread (the longer schedules only sample more coarsely): say so.
    reach = "overtakes" if g > m else "comes within the seed spread of"
    out.append(f"Scratch {reach} the best pretrained {metric} "
               f"({best} at {best_x}x) at {n}x: {scratch[n]}, {points(g)} points against a "
               f"spread of {m * 100:.1f}; that is {steps_of[n] / steps_of[target_x]:.1f}x the "
               f"iterations of the pretrained arm's "
               f"{'plateau' if at is not None else 'best schedule'} ({steps_of[n]} vs "
               f"{steps_of[target_x]}).")
  else:
    n = max(scratch, key=lambda k: scratch[k].mean)
    g, m = scratch[n].mean - best.mean, margin(scratch[n], best)
    out.append(f"Scratch does not come within the seed spread of the best pretrained {metric} "
               f"({best} at {best_x}x) within {max(scratch)}x: its best is {scratch[n]} at "
               f"{n}x, {points(g)} points against a spread of {m * 100:.1f}.")
  # At equal AP: the first iteration at which pretrained reached each scratch result.
  curve = sorted(pretrained_points) or sorted((steps_of[m], pre[m].mean) for m in xs)
  matches = []
  for n in sorted(scratch):
    reached = [(step, ap) for step, ap in curve if ap >= scratch[n].mean]
    if reached:
      step, ap = reached[0]
      matches.append(f"scratch's {n}x mean ({scratch[n].mean:.3f}, {steps_of[n]} iterations) "
                     f"at iteration {step} ({ap:.3f}): {_fewer(steps_of[n], step)}")
    else:
      matches.append(f"scratch's {n}x mean ({scratch[n].mean:.3f}) never")
  out.append("Pretrained reached " + "; ".join(matches) + " (its evaluations are periodic, so "
             "these iterations are upper bounds).")
  return out


def less_data_reading(num_train: int, num_x: int, runs: Dict[str, Dict], full: Dict[str, Spread],
                      tolerance: float) -> str:
  """One paragraph on the less-data runs at `num_train` images: `runs[init]` = {"final":
  Spread of final box AP, "best": (AP, step) of the best evaluation of seed 0, "final_step"},
  `full[init]` = the full-data Spread at the same schedule (for the spread and the drop)."""
  s, p = runs["scratch"]["final"], runs["pretrained"]["final"]
  m = max([margin(s, p)] + [full[i].spread for i in full])
  g = s.mean - p.mean
  verdict = ("is ahead of"
             if g > m else "comes within the seed spread of" if g >= -m else "falls short of")
  text = (f"**{num_train} training images, {num_x}x.** Scratch {verdict} pretrained: final box "
          f"AP {s} vs {p}, {points(g)} points against a spread of {m * 100:.1f} (the larger of "
          "these runs' ranges and the full-data runs' at this schedule).")
  over = []
  for init in ("scratch", "pretrained"):
    best, step = runs[init]["best"]
    final = runs[init]["final"].values[0]
    if best > final + tolerance / 2:
      over.append(f"{init} peaks at {best:.3f} (step {step}) and ends at {final:.3f}")
  text += (" Overfitting: " + "; ".join(over) + "." if over else
           " No sign of overfitting: each run ends within half a point of its best evaluation.")
  if full:
    text += " With all the training images the same schedule gave " + ", ".join(
        f"{full[i]} ({i})" for i in ("scratch", "pretrained") if i in full) + "."
  return text
