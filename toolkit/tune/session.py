"""One tritonserver for a whole tuning run, and one round of trials measured on it.

The server runs in explicit model-control mode on the scratch repository. Each candidate has
"slots": linked copies of its model folder under other names, so a round can serve several
configs of it at once. A slot gets its config through the repository API (a load with a
configuration override, no restart) and keeps it while later rounds want it. A config that
cannot load is recorded as failed; the server is restarted only when it dies or a load hangs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts.runner import first_line
from toolkit.bench.load import LoadWindows, measure_interleaved_levels, synthetic_batch
from toolkit.errors import DlkitError
from toolkit.files import link_tree, private_folder
from toolkit.log import logger
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import CONFIG_FILE, apply_serving, config_json, write_config
from toolkit.triton.server import ServerBinary, TritonServer, find_tritonserver
from toolkit.triton.statistics import ServerTimes, snapshot
from toolkit.tune import inputs
from toolkit.tune.inputs import Candidate
from toolkit.tune.space import TrialConfig
from toolkit.tune.trials import LevelResult, Trial, TrialStatus

START_TIMEOUT = 300.0  # stubs import their runtime; a busy 2-core machine needs time


@dataclass(frozen=True)
class MeasureSettings:
    """How rounds are measured: the concurrency levels, their stability windows, and the time
    limits of a load and of one request (seconds). `shared_memory` passes tensors through
    system shared memory, as a client on the server's machine can."""

    levels: tuple[int, ...] = (1, 4, 16)
    windows: LoadWindows = field(default_factory=LoadWindows)
    load_timeout: float = 120.0
    request_timeout: float = 10.0
    shared_memory: bool = False


class TuningServer:
    """A tritonserver on the scratch repository `repo` serving `candidates` (by variant)."""

    def __init__(self, repo: Path, candidates: dict[str, Candidate], binary: ServerBinary):
        self.repo, self.candidates, self.binary = repo, candidates, binary
        self.server: TritonServer | None = None
        self.loaded: dict[str, TrialConfig] = {}  # slot model -> its config
        self.restarts = 0

    def start(self, first: TrialConfig) -> None:
        """Start with slot 0 of `first.variant` serving `first` (its config written before
        the start, so the slot serves what it is recorded as serving)."""
        slot = self._slot(first.variant, 0)
        write_config(self.triton_config(slot, first), self.repo / slot / CONFIG_FILE)
        ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}  # any free ones
        log = self.repo.parent / "tritonserver.log"
        self.server = TritonServer(
            self.repo, models=[slot], log_file=log, binary=self.binary, **ports
        )
        self.server.start(START_TIMEOUT)
        self.first, self.loaded = first, {slot: first}

    def restart(self) -> None:
        log = self.server.log_text().splitlines()[-5:] if self.server else []
        logger.warning("restarting tritonserver; its last log lines:\n%s", "\n".join(log))
        self.stop(timeout=5.0)  # a hung load need not be waited for
        self.restarts += 1
        self.start(self.first)

    def stop(self, timeout: float = 30.0) -> None:
        if self.server is not None:
            self.server.stop(timeout)
            self.server, self.loaded = None, {}

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.grpc_url

    def alive(self) -> bool:
        process = self.server.process if self.server else None
        return process is not None and process.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server's processes (it and its python stubs) have used, or None
        where /proc cannot tell."""
        if not self.alive() or not sys.platform.startswith("linux"):
            return None
        return process_group_cpu(self.server.process.pid)

    def serve(self, configs: list[TrialConfig], timeout: float) -> list[tuple[str, str]]:
        """Serve each config from a slot of its variant: slots that already hold one keep it,
        slots no config wants are unloaded, the others loaded with their config as an
        override. Per config: (slot, "" or why it did not load)."""
        restarts = self.restarts
        results = self._assign(configs, timeout)
        if self.restarts != restarts:  # a hung load restarted the server: serve the rest again
            ok = [i for i, (_, error) in enumerate(results) if not error]
            again = self.serve([configs[i] for i in ok], timeout)
            for i, result in zip(ok, again, strict=True):
                results[i] = result
        return results

    def _assign(self, configs: list[TrialConfig], timeout: float) -> list[tuple[str, str]]:
        chosen: dict[int, str] = {}
        for i, config in enumerate(configs):
            held = [s for s, c in self.loaded.items() if c == config and s not in chosen.values()]
            if held:
                chosen[i] = held[0]
        for slot in [s for s in self.loaded if s not in chosen.values()]:
            with contextlib.suppress(DlkitError), self._control(30) as control:
                control.unload_model(slot)
            del self.loaded[slot]
        results = []
        for i, config in enumerate(configs):
            error = ""
            if i not in chosen:
                chosen[i] = self._free_slot(config.variant, set(chosen.values()))
                error = self._load(chosen[i], config, timeout)
            results.append((chosen[i], error))
        return results

    def _load(self, slot: str, config: TrialConfig, timeout: float) -> str:
        """Load `slot` with `config`; "" or why not (restarting a server a load left hung)."""
        begin = time.perf_counter()
        try:
            with self._control(timeout) as control:
                control.load_model(slot, config_json(self.triton_config(slot, config)))
        except DlkitError as exc:
            self.loaded.pop(slot, None)
            if time.perf_counter() - begin >= timeout * 0.95 and self.alive():
                self.restart()
                return f"did not load within {timeout:g} s (the server was restarted)"
            return first_line(exc)
        self.loaded[slot] = config
        return ""

    def triton_config(self, slot: str, config: TrialConfig) -> mc.ModelConfig:
        """The candidate's packaged config, named `slot`, with `config`'s serving options."""
        result = mc.ModelConfig()
        result.CopyFrom(self.candidates[config.variant].base)
        result.name = slot
        return apply_serving(result, config.serving)

    def _control(self, timeout: float) -> TritonClient:
        return TritonClient(self.url, timeout=timeout, retries=0)

    def _free_slot(self, variant: str, taken: set[str]) -> str:
        i = 0
        while self._slot(variant, i) in taken or self._slot(variant, i) in self.loaded:
            i += 1
        return self._slot(variant, i)

    def _slot(self, variant: str, i: int) -> str:
        """Slot `i` of `variant`: a linked copy of its model folder, made on first use."""
        candidate = self.candidates[variant]
        name = f"{candidate.model}_s{i}"
        if not (self.repo / name).is_dir():
            link_tree(self.repo / candidate.model, self.repo / name)
            config = mc.ModelConfig()
            config.CopyFrom(candidate.base)
            config.name = name
            os.unlink(self.repo / name / CONFIG_FILE)  # a link: replace, never write through
            write_config(config, self.repo / name / CONFIG_FILE)
        return name


def process_group_cpu(pgid: int) -> float:
    """User and system CPU seconds of the live processes in process group `pgid`."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields from the state on: pgrp is the third
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def run_round(server: TuningServer, trials: list[Trial], settings: MeasureSettings) -> None:
    """Serve every trial's config at once and measure them level by level, windows
    interleaved; the results go into `trials`. If the server dies, the round's trials are
    marked crashed and it is restarted."""
    start = time.perf_counter()
    slots = server.serve([t.config for t in trials], settings.load_timeout)
    live = {}
    for trial, (slot, error) in zip(trials, slots, strict=True):
        if error:
            trial.status, trial.error = TrialStatus.FAILED, error
        else:
            live[slot] = trial
    if live and server.alive():
        _measure(server, live, settings)
    if not server.alive():
        for trial in trials:
            trial.status = TrialStatus.CRASHED
            trial.error = "tritonserver died during this round (restarted)"
        server.restart()
    for trial in trials:
        trial.seconds = (time.perf_counter() - start) / len(trials)


def _measure(server: TuningServer, live: dict[str, Trial], settings: MeasureSettings) -> None:
    options = {"timeout": settings.request_timeout, "retries": 0}
    with TritonClient(server.url, shared_memory=settings.shared_memory, **options) as client:
        batch = synthetic_batch(client.model(next(iter(live))), 1)
        for concurrency in settings.levels:
            before = {s: snapshot(client.statistics(s), s) for s in live}
            levels = measure_interleaved_levels(
                client, list(live), batch, concurrency, settings.windows, server.cpu_seconds
            )
            if not server.alive():
                return
            for slot, trial in live.items():
                times = ServerTimes.between(before[slot], snapshot(client.statistics(slot), slot))
                trial.levels.append(LevelResult(levels[slot], times))


def compare_configs(
    artifacts: str | os.PathLike | list[str | os.PathLike],
    configs: list[TrialConfig],
    settings: MeasureSettings,
) -> list[Trial]:
    """Serve one artifact (or several: each config names its variant, the artifact's file
    stem) under each of `configs` side by side on a fresh server of its own (a scratch
    repository) and measure them in one round: the trials, in order."""
    paths = artifacts if isinstance(artifacts, list) else [artifacts]
    candidates = inputs.from_artifacts(paths)
    binary = find_tritonserver()
    with private_folder("dlkit-compare-") as tmp:
        inputs.stage(candidates, Path(tmp) / "repo", binary)
        server = TuningServer(Path(tmp) / "repo", {c.variant: c for c in candidates}, binary)
        server.start(configs[0])
        try:
            trials = [Trial(i, c, 0, "comparison") for i, c in enumerate(configs)]
            run_round(server, trials, settings)
        finally:
            server.stop()
    return trials
