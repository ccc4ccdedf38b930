"""`tune(config)`: choose how Triton serves a model by measuring the real server under load.

Stage the candidates in a scratch repository, start one tritonserver on it, then let the
search (`toolkit.tune.search`) pick trial after trial until it converges or the time budget
ends; verify the winner's accuracy through the endpoint, break one request's time down, and
only then write the winner into the user's repository and the report. Ctrl-C or SIGTERM at any
point stops the server and leaves the repository as it was.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.bench.environment import usable_cores
from toolkit.bench.load import LoadWindows, synthetic_batch
from toolkit.choices import Device, Objective
from toolkit.devices import cuda_available
from toolkit.errors import DlkitError
from toolkit.files import private_folder
from toolkit.log import logger
from toolkit.processes import sigterm_interrupts
from toolkit.triton.audit import check_repository
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import serving_options
from toolkit.triton.repository import check_name
from toolkit.triton.server import find_tritonserver
from toolkit.tune import inputs
from toolkit.tune.breakdown import Breakdown, request_breakdown
from toolkit.tune.inputs import Candidate
from toolkit.tune.publish import publish, served_options
from toolkit.tune.report import TuneReport, write_report
from toolkit.tune.search import Goal, climb, confirmation, judge, strategy
from toolkit.tune.session import MeasureSettings, TuningServer, run_round
from toolkit.tune.space import SearchSpace, TrialConfig, cpu_space
from toolkit.tune.trials import Trial
from toolkit.tune.verify import verify_endpoint

# Windows per model and level at most: interleaving already makes the comparison fair, so a
# level that has not settled after five is reported as such (marked) rather than chased.
MAX_WINDOWS = 5


@dataclass
class TuneConfig:
    """Settings of one `dlkit tune` run: what to tune (`artifacts`: files or deploy run
    folders; or model `name` of `repo`), the goal, the budget, and how trials are measured.
    `dry_run` measures and chooses only: no accuracy check, nothing written."""

    artifacts: list[str] = field(default_factory=list)
    repo: str = "model_repository"
    name: str | None = None
    objective: str = Objective.THROUGHPUT
    concurrency: tuple[int, ...] = (1, 4, 16)
    p99_ms: float | None = None
    budget_minutes: float = 10.0
    device: str = Device.CPU
    max_accuracy_drop: float = 1.0
    report: str | None = None
    window_seconds: float = 1.0
    shared_memory: bool = False
    load_timeout: float = 120.0
    dry_run: bool = False
    trust: bool = False  # serve a model of `repo` that holds what dlkit does not write
    space: SearchSpace | None = None  # the default space for this machine when None


@dataclass
class Tuning:
    """A run in progress: the candidates by variant, the space, the goal, the trials."""

    candidates: dict[str, Candidate]
    space: SearchSpace
    start: TrialConfig
    goal: Goal
    settings: MeasureSettings
    trials: list[Trial] = field(default_factory=list)

    def run_round(self, server: TuningServer, configs, axis: str) -> list[Trial]:
        """Measure `configs` in one round; their trials are added and returned."""
        number = self.trials[-1].round + 1 if self.trials else 0
        first = len(self.trials)
        trials = [Trial(first + i, c, number, axis) for i, c in enumerate(configs)]
        run_round(server, trials, self.settings)
        self.trials += trials
        for trial in trials:
            summary = _summary(trial, self.start)
            logger.info("trial %d (round %d, %s) %s", trial.index, number, axis, summary)
        return trials


def tune(config: TuneConfig) -> TuneReport:
    """Run the search and write the result; the report (also written to `config.report`)."""
    began = time.perf_counter()
    goal = Goal(Objective.parse(config.objective, "objective"), tuple(sorted(config.concurrency)))
    goal = dataclasses.replace(goal, p99_ms=config.p99_ms)
    device = Device.parse(config.device, "device")
    if device not in Device.targets():
        raise DlkitError("tune serves on --device cpu or cuda")
    if device == Device.CUDA and not cuda_available():
        raise DlkitError("--device cuda was asked for but there is no CUDA GPU here; use cpu")
    if not config.budget_minutes > 0:
        raise DlkitError("--budget-minutes must be above 0")
    candidates, name = _candidates(config)
    binary = find_tritonserver()
    writing = False
    with private_folder("dlkit-tune-") as tmp, sigterm_interrupts():
        try:
            scratch = Path(tmp) / "repo"
            inputs.stage(candidates, scratch, binary, config.repo)
            tuning = _tuning(config, candidates, goal, device)
            server = TuningServer(scratch, tuning.candidates, binary)
            try:
                server.start(tuning.start)
                report = _search_and_check(config, tuning, server)
            finally:
                server.stop()
            if not config.dry_run:
                writing = True
                report.written = _write(config, tuning, report, name)
        except KeyboardInterrupt:
            where = (
                f"while writing into {config.repo}: check its newest version of {name}"
                if writing
                else f"and {config.repo} was left as it was"
            )
            raise DlkitError(
                f"tune was interrupted; the tuning server was stopped {where}"
            ) from None
    report.seconds = round(time.perf_counter() - began, 1)
    if config.report:
        write_report(report, config.report)
    return report


def _candidates(config: TuneConfig) -> tuple[list[Candidate], str]:
    if config.artifacts:
        candidates = inputs.from_artifacts(config.artifacts)
        name = config.name or inputs.model_name(config.artifacts, candidates)
        check_name(name)  # now, not after the search
        return candidates, name
    if not config.name:
        raise DlkitError("give the ARTIFACT(s) to tune, or --repo DIR --name MODEL")
    candidate = inputs.from_repository(config.repo, config.name)
    check_repository(config.repo, [config.name], config.trust)  # Triton will run its files
    return [candidate], config.name


def _tuning(config: TuneConfig, candidates: list[Candidate], goal: Goal, device: str) -> Tuning:
    first = candidates[0]
    variants = tuple(c.variant for c in candidates)
    space = config.space or cpu_space(variants, usable_cores(), device)
    space = dataclasses.replace(space, variants=variants, batches=first.base.max_batch_size > 0)
    windows = LoadWindows(window=config.window_seconds, max_windows=MAX_WINDOWS)
    settings = MeasureSettings(
        goal.levels, windows, config.load_timeout, shared_memory=config.shared_memory
    )
    start = space.normalise(TrialConfig(first.variant, serving_options(first.base)))
    return Tuning({c.variant: c for c in candidates}, space, start, goal, settings)


def _search_and_check(config: TuneConfig, tuning: Tuning, server: TuningServer) -> TuneReport:
    deadline = time.perf_counter() + config.budget_minutes * 60
    best, stopped = _search(tuning, server, deadline)
    if not tuning.trials:  # a space with nothing to vary: the default alone
        tuning.run_round(server, [tuning.start], "default")
    if best == tuning.start:
        default = chosen = _latest(tuning.trials, best)
        selected = default if judge(default, tuning.goal).feasible else None
        decision = "the search found nothing better than the default"
    else:
        default, chosen = tuning.run_round(server, [tuning.start, best], "confirm")
        selected, decision = confirmation(default, chosen, tuning.goal)
    if selected is None:
        raise _nothing_met(tuning)
    logger.info("decision: %s", decision)
    shown = {"default": default} | ({"selected": selected} if selected is not default else {})
    slots = server.serve([t.config for t in shown.values()], tuning.settings.load_timeout)
    breakdowns = {
        key: _breakdown(tuning, server, slot) for key, (slot, _) in zip(shown, slots, strict=True)
    }
    accuracy = None
    if not config.dry_run:
        logger.info("checking accuracy through the endpoint on the whole validation split ...")
        candidate = tuning.candidates[selected.config.variant]
        accuracy = verify_endpoint(
            server.url, candidate, slots[-1][0], config.max_accuracy_drop, config.shared_memory
        )
    return TuneReport(
        settings=_settings(config, tuning),
        strategy=strategy(tuning.space, tuning.goal),
        trials=tuning.trials,
        baseline=default,
        selected=selected,
        chosen_by_search=chosen,
        stopped=stopped,
        decision=decision,
        accuracy=accuracy,
        breakdowns=breakdowns,
        server_restarts=server.restarts,
    )


def _search(tuning: Tuning, server: TuningServer, deadline: float) -> tuple[TrialConfig, str]:
    """Measure rounds as the search asks until it converges or the budget would be spent
    (the first round always runs); the best config, and why the search stopped."""
    while True:
        step = climb(tuning.space, tuning.start, tuning.trials, tuning.goal)
        if step.next is None:
            return step.best, "converged"
        spent = [t.seconds for t in tuning.trials]
        if spent and time.perf_counter() + len(step.next) * sum(spent) / len(spent) > deadline:
            return step.best, "time budget"
        tuning.run_round(server, list(step.next), step.axis)


def _latest(trials: list[Trial], config: TrialConfig) -> Trial:
    return [t for t in trials if t.config == config][-1]


def _summary(trial: Trial, reference: TrialConfig) -> str:
    if not trial.ok:
        return f"{trial.config.describe(reference)}: {trial.status} ({trial.error})"
    levels = ", ".join(
        f"c{lv.concurrency} {lv.throughput:.0f}/s p99 {lv.p99_ms:.2f} ms" for lv in trial.levels
    )
    return f"{trial.config.describe(reference)}: {levels}"


def _breakdown(tuning: Tuning, server: TuningServer, slot: str) -> Breakdown:
    """One request's time at concurrency 1 on the model in `slot`."""
    options = {"shared_memory": tuning.settings.shared_memory, "retries": 0}
    with TritonClient(server.url, timeout=tuning.settings.request_timeout, **options) as client:
        batch = synthetic_batch(client.model(slot), 1)
        return request_breakdown(client, slot, batch, seconds=tuning.settings.windows.window * 2)


def _nothing_met(tuning: Tuning) -> DlkitError:
    measured = [
        (max(lv.p99_ms for lv in t.levels), t)
        for t in tuning.trials
        if t.ok and t.levels and not any(lv.failures for lv in t.levels)
    ]
    if tuning.goal.p99_ms is not None and measured:
        p99, trial = min(measured, key=lambda m: m[0])
        return DlkitError(
            f"no configuration kept p99 within {tuning.goal.p99_ms:g} ms at every level: the "
            f"best p99 seen was {p99:.2f} ms (trial {trial.index}, "
            f"{trial.config.describe(tuning.start)}); "
            "nothing was written"
        )
    reasons = "; ".join(f"trial {t.index}: {t.error or 'failed requests'}" for t in tuning.trials)
    return DlkitError(f"no configuration served without failures ({reasons}); nothing written")


def _settings(config: TuneConfig, tuning: Tuning) -> dict:
    return {
        "objective": str(tuning.goal.objective),
        "concurrency": list(tuning.goal.levels),
        "p99_ms": tuning.goal.p99_ms,
        "budget_minutes": config.budget_minutes,
        "device": str(config.device),
        "window_seconds": config.window_seconds,
        "shared_memory": config.shared_memory,
        "max_accuracy_drop": config.max_accuracy_drop,
        "space": tuning.space.describe(),
        "cores": usable_cores(),
    }


def _write(config: TuneConfig, tuning: Tuning, report: TuneReport, name: str) -> dict | None:
    """Publish the selected config, unless what is served would not change: a model tuned
    from `--repo --name` that nothing beat beyond the noise, or a model whose newest version
    is this very file, which nothing beat or which already serves the chosen config."""
    selected = report.selected
    candidate = tuning.candidates[selected.config.variant]
    serving = selected.config.serving
    served = served_options(candidate, config.repo, name)
    kept = selected is report.baseline and (not config.artifacts or served is not None)
    if kept or served == serving:
        why = "nothing beat it beyond the noise" if kept else "it is served that way already"
        report.decision += f"; {name} in {config.repo} is left as it is ({why}): nothing written"
        logger.info("%s is left as it is: nothing written", name)
        return None
    return publish(candidate, serving, config.repo, name)
