"""The search's decisions, as pure functions of the measured numbers.

`judge` says whether a trial meets the goal and how good it is; `decide` picks a round's
winner; `climb` replays coordinate descent over the rounds measured so far and returns the
best config and the next round to measure; `confirm` makes the final choice. Nothing here
measures, sleeps or reads a clock: the same measurements give the same decisions, and the
tests drive it with made-up figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from toolkit.choices import Objective
from toolkit.errors import DlkitError
from toolkit.tune.space import SearchSpace, TrialConfig
from toolkit.tune.trials import Trial

MAX_SWEEPS = 3
MARGIN = 0.05  # a move must win by more than this: about the noise of one measurement here


@dataclass(frozen=True)
class Goal:
    """What the search optimises: throughput at the highest concurrency, or p99 latency at
    the lowest; `p99_ms` bounds p99 at every level. `margin` is the fraction a config must
    win by to replace another."""

    objective: Objective
    levels: tuple[int, ...]
    p99_ms: float | None = None
    margin: float = MARGIN

    def __post_init__(self) -> None:
        if not self.levels or min(self.levels) < 1:
            raise DlkitError("--concurrency needs at least one level, each 1 or more")
        if self.p99_ms is not None and not self.p99_ms > 0:
            raise DlkitError("--p99-ms must be above 0")

    @property
    def focus(self) -> int:
        """The level the objective reads."""
        return max(self.levels) if self.objective == Objective.THROUGHPUT else min(self.levels)

    def describe(self) -> str:
        what = (
            f"highest throughput at concurrency {self.focus}"
            if self.objective == Objective.THROUGHPUT
            else f"lowest p99 latency at concurrency {self.focus}"
        )
        limit = f", p99 within {self.p99_ms:g} ms at every level" if self.p99_ms else ""
        return what + limit


@dataclass(frozen=True)
class Verdict:
    """Whether a trial meets the goal and its value (higher is better: images/s, or minus
    the p99 in ms). An infeasible trial's value says how far off it is: minus its worst p99
    over the limit as a ratio, or minus infinity (failed, failing requests, slower)."""

    feasible: bool
    value: float
    reason: str = ""


def judge(trial: Trial, goal: Goal, reference: Trial | None = None) -> Verdict:
    """The verdict on `trial`. With the throughput objective and a `reference` measured
    alongside it, the trial must also serve at least the reference's throughput at every
    level (within the margin): a win at the top level may not cost the levels below."""
    if not trial.ok:
        return Verdict(False, -math.inf, trial.error or str(trial.status))
    for c in goal.levels:
        level = trial.level(c)
        if level is None or level.load.requests == 0:
            return Verdict(False, -math.inf, f"no request answered at concurrency {c}")
        if level.failures:
            return Verdict(False, -math.inf, f"{level.failures} failed requests at concurrency {c}")
    if goal.p99_ms is not None:
        worst = max(goal.levels, key=lambda c: trial.level(c).p99_ms)
        p99 = trial.level(worst).p99_ms
        if p99 > goal.p99_ms:
            reason = f"p99 {p99:.2f} ms at concurrency {worst} is over the {goal.p99_ms:g} ms limit"
            return Verdict(False, -p99 / goal.p99_ms, reason)
    guarded = reference is not None and reference.ok and reference is not trial
    if goal.objective == Objective.THROUGHPUT and guarded:
        for c in goal.levels:
            mine, theirs = trial.level(c).throughput, reference.level(c)
            if theirs is not None and mine < theirs.throughput * (1 - goal.margin):
                return Verdict(
                    False,
                    -math.inf,
                    f"serves {mine:.0f}/s at concurrency {c}, below the "
                    f"{theirs.throughput:.0f}/s of the config it was measured against",
                )
    focus = trial.level(goal.focus)
    value = focus.throughput if goal.objective == Objective.THROUGHPUT else -focus.p99_ms
    return Verdict(True, value)


def beats(a: Verdict, b: Verdict, margin: float = MARGIN) -> bool:
    """Does `a` win over `b` clearly: feasible over infeasible, else by more than `margin`
    of `b`'s value?"""
    if a.feasible != b.feasible:
        return a.feasible
    if math.isinf(a.value) or math.isinf(b.value):
        return a.value > b.value
    return a.value > b.value + margin * abs(b.value)


def _rank(verdict: Verdict) -> tuple[bool, float]:
    return verdict.feasible, verdict.value


def improves(a: Trial, b: Trial, goal: Goal) -> bool:
    """Is `a` better than `b` somewhere without being worse anywhere: its objective no worse
    than `b`'s beyond the margin, its throughput no lower at any level beyond the margin,
    and higher by more than the margin at one level at least? (Both must meet the goal.)
    The throughput objective reads the highest level, where a queue delay costs nothing;
    this is how a config that halves the latency at concurrency 1 still wins there."""
    va, vb = judge(a, goal, b), judge(b, goal)
    if not (va.feasible and vb.feasible) or va.value < vb.value - goal.margin * abs(vb.value):
        return False
    pairs = [(a.level(c).throughput, b.level(c).throughput) for c in goal.levels]
    if any(mine < theirs * (1 - goal.margin) for mine, theirs in pairs):
        return False
    return any(mine > theirs * (1 + goal.margin) for mine, theirs in pairs)


def decide(round_trials: Sequence[Trial], goal: Goal) -> TrialConfig:
    """The winner of one round: the first trial is the incumbent, the others its neighbours
    along one axis. A neighbour that beats it on the objective by the margin wins (the best,
    if several do), else one that `improves` on it; else the incumbent stays."""
    incumbent, *others = round_trials
    held = judge(incumbent, goal)
    verdicts = [(t, judge(t, goal, incumbent)) for t in others]
    winners = [(t, v) for t, v in verdicts if beats(v, held, goal.margin)]
    winners = winners or [(t, v) for t, v in verdicts if improves(t, incumbent, goal)]
    if not winners:
        return incumbent.config
    return max(winners, key=lambda tv: _rank(tv[1]))[0].config


@dataclass(frozen=True)
class Step:
    """Where coordinate descent stands: the best config so far, and the next round to
    measure (the best, then its neighbours along `axis`), None once converged."""

    best: TrialConfig
    next: tuple[TrialConfig, ...] | None = None
    axis: str = ""


def rounds_of(trials: Sequence[Trial]) -> list[list[Trial]]:
    """Trials grouped by round, in order."""
    rounds: dict[int, list[Trial]] = {}
    for trial in trials:
        rounds.setdefault(trial.round, []).append(trial)
    return [rounds[r] for r in sorted(rounds)]


def climb(space: SearchSpace, start: TrialConfig, trials: Sequence[Trial], goal: Goal) -> Step:
    """Replay coordinate descent from `start` over the rounds measured so far.

    Along each axis in turn, the best config and its neighbours form a round; the round's
    winner (`decide`) becomes the best. A round already measured with the same configs is
    not measured again. Sweeps over all axes repeat until one changes nothing, at most
    MAX_SWEEPS times. Raises ValueError when `trials` are not the rounds this search asks for.
    """
    rounds, used = rounds_of(trials), 0
    decided: dict[tuple[TrialConfig, ...], TrialConfig] = {}
    best = start
    for _ in range(MAX_SWEEPS):
        moved = False
        for axis in space.axes():
            wanted = (best, *space.neighbours(best, axis))
            if len(wanted) == 1:
                continue
            if wanted not in decided:
                if used == len(rounds):
                    return Step(best, wanted, axis.name)
                measured = tuple(t.config for t in rounds[used])
                if measured != wanted:
                    raise ValueError(f"round {used} measured {measured}, the search asks {wanted}")
                decided[wanted] = decide(rounds[used], goal)
                used += 1
            moved |= decided[wanted] != best
            best = decided[wanted]
        if not moved:
            break
    return Step(best)


def confirm(default: Trial, chosen: Trial, goal: Goal) -> Trial | None:
    """The final choice (see `confirmation`)."""
    return confirmation(default, chosen, goal)[0]


def confirmation(default: Trial, chosen: Trial, goal: Goal) -> tuple[Trial | None, str]:
    """The final choice from a last round measuring the default and the search's best
    together, and why. A change within the noise is no change: the best replaces the default
    only when both meet the goal, every level of both settled, and the best wins on the
    objective by more than the margin and more than the noise measured on either (the
    relative range of its windows at the level the objective reads). Else the default, if it
    meets the goal; else the best, if it does; else None."""
    held, challenger = judge(default, goal), judge(chosen, goal, default)
    if not held.feasible:
        if challenger.feasible:
            return chosen, f"the default does not meet the goal ({held.reason})"
        return None, f"neither meets the goal ({held.reason}; {challenger.reason})"
    if not challenger.feasible:
        return default, f"kept the default: the search's best does not hold ({challenger.reason})"
    unsettled = [
        f"{who} at concurrency {c}"
        for who, trial in (("the default", default), ("the best", chosen))
        for c in goal.levels
        if trial.level(c).load.stable is False
    ]
    if unsettled:
        return default, (
            f"kept the default: the confirmation's windows did not agree for "
            f"{', '.join(unsettled)}, so no difference is established"
        )
    noise = max(goal.margin, _spread(default, goal.focus), _spread(chosen, goal.focus))
    compared = _compared(default, chosen, goal)
    if not beats(challenger, held, noise):
        return default, f"kept the default: {compared} is within the measured noise (±{noise:.0%})"
    return chosen, f"{compared}, beyond the measured noise (±{noise:.0%})"


def _spread(trial: Trial, concurrency: int) -> float:
    """The relative range of a trial's windows at a level (0 where none was measured)."""
    return trial.level(concurrency).load.spread or 0.0


def _compared(default: Trial, chosen: Trial, goal: Goal) -> str:
    """The best against the default on the objective, in words."""
    mine, theirs = chosen.level(goal.focus), default.level(goal.focus)
    if goal.objective == Objective.THROUGHPUT:
        a, b, unit, what = mine.throughput, theirs.throughput, " images/s", ""
    else:
        a, b, unit, what = mine.p99_ms, theirs.p99_ms, " ms", "p99 "
    return (
        f"the best's {what}{a:,.2f}{unit} against the default's {b:,.2f}{unit} "
        f"({a / b - 1:+.1%}) at concurrency {goal.focus}"
    )


def strategy(space: SearchSpace, goal: Goal) -> str:
    """The search, in words, for the report."""
    axes = ", ".join(axis.name for axis in space.axes())
    guard = (
        ", never below the best's throughput at any level"
        if goal.objective == Objective.THROUGHPUT
        else ""
    )
    return (
        f"Coordinate descent (hill climbing) from the default configuration, for the "
        f"{goal.describe()}. Axes in this order: {axes}. Each round loads the best "
        "configuration so far and every other value of one axis side by side and measures "
        "them with their windows interleaved, so other work on the machine hits all alike; a "
        f"value that beats the best by more than {goal.margin:.0%} in its round (and meets the "
        f"limits: no failed request{guard}) becomes the best; failing that, one no worse "
        f"anywhere and {goal.margin:.0%} better at some level. Sweeps repeat until one changes "
        f"nothing (at most {MAX_SWEEPS}) or the time budget ends; the whole cross product is "
        "never walked. A last round measures the default and the best together: the best is "
        "kept only if it meets the limits, every level of both settled, and it beats the "
        "default there by more than the margin and the noise measured on either (a change "
        "within the noise is no change)."
    )
