"""The sweep: which jobs to run, then every job at every batch size, measured side by side.

At each batch size every runner is built and warmed up first, then their measurement windows
are taken in turn (`measure_interleaved`), all under one thread budget for torch and ONNX
Runtime alike, so a burst of other work on a shared machine slows every variant equally
instead of whichever happened to be running.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.artifacts import detect_format, open_runner, read_info
from toolkit.artifacts.checkpoint import EagerRunner, load_model
from toolkit.artifacts.metadata import ArtifactInfo, DataSource, Preprocessing
from toolkit.artifacts.runner import Runner, first_line
from toolkit.artifacts.torchscript import TorchScriptRunner
from toolkit.bench.environment import PeakMemory, default_threads, describe_environment
from toolkit.bench.harness import (
    MeasureConfig,
    cuda_event_step,
    measure_interleaved,
    wall_clock_step,
    warm_up,
)
from toolkit.bench.results import BenchReport, BenchRow, Skip, agreement, rank
from toolkit.choices import Device, Format
from toolkit.devices import resolve_device
from toolkit.errors import DlkitError
from toolkit.files import private_folder
from toolkit.log import logger
from toolkit.training.models import create_model
from toolkit.variants.build import Source, VariantSkipped, build_runner
from toolkit.variants.registry import VARIANTS, resolve_variants

DEFAULT_BATCH_SIZES = (1, 8, 32)
RANKED_BY = {
    Device.CPU: "p50 latency (end to end: numpy batch in, numpy logits out)",
    Device.CUDA: "p50 device time (CUDA events, input already on the GPU); "
    "latency_ms is end to end and includes the host-device copies",
}


@dataclass
class Job:
    """One row label of the sweep: how to build its runner for a batch size, or why not."""

    label: str
    build: Callable[[int], Runner] | None = None
    error: str | None = None


def run_benchmark(
    artifacts: Sequence[str | os.PathLike] = (),
    model: str | None = None,
    *,
    image_size: int = 224,
    num_classes: int = 1000,
    channels: int = 3,
    variants: Sequence[str] | None = None,
    device: str = "cpu",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    config: MeasureConfig | None = None,
    recheck: bool = False,
) -> BenchReport:
    """Benchmark model variants built from `model` (a `create_model` name, random weights) or
    from checkpoints, and ONNX/TorchScript files as they are. `threads` (default: half the
    usable cores) is the intra-op thread budget of every runner.

    Raises DlkitError for unusable settings, and when nothing at all could be benchmarked.
    """
    device = Device.parse(device, "device")
    if device == Device.AUTO:
        raise DlkitError("choose --device cpu or cuda to benchmark")
    resolve_device(device)  # --device cuda without CUDA stops here, before any work
    if bool(artifacts) == bool(model):
        raise DlkitError("give either ARTIFACT paths or --model NAME (not both, not neither)")
    threads = threads or default_threads()
    with private_folder("dlkit-bench-") as workdir:
        jobs = plan_jobs(
            artifacts, model, variants, device, threads, Path(workdir),
            (channels, image_size, num_classes),
        )  # fmt: skip
        settings = {
            "model": model or [str(a) for a in artifacts],
            "variants": [job.label for job in jobs],
        }
        return benchmark_jobs(jobs, batch_sizes, device, threads, config, recheck, settings)


def benchmark_jobs(
    jobs: list[Job],
    batch_sizes: Sequence[int],
    device: str,
    threads: int,
    config: MeasureConfig | None = None,
    recheck: bool = False,
    settings: dict[str, Any] | None = None,
) -> BenchReport:
    """Measure prepared jobs (the sweep behind `run_benchmark` and `dlkit deploy`)."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise DlkitError("batch sizes must be positive integers, e.g. --batch-sizes 1,8,32")
    if threads < 1:
        raise DlkitError("--threads must be at least 1")
    torch.set_num_threads(threads)
    config = config or MeasureConfig()
    rows, skipped = sweep(jobs, batch_sizes, device, config)
    consistency = _recheck(jobs, rows, device, config) if recheck else None
    if not rows:
        reasons = "; ".join(s.text() for s in skipped)
        raise DlkitError(f"nothing could be benchmarked: {reasons}")
    rank(rows)
    return BenchReport(
        environment=describe_environment(device, threads),
        settings={
            "model": None,
            "variants": [job.label for job in jobs],
            **(settings or {}),
            "device": str(device),
            "batch_sizes": list(batch_sizes),
            "threads": threads,
            "interleaved": True,
            "ranked_by": RANKED_BY[Device(device)],
            **dataclasses.asdict(config),
        },
        results=rows,
        skipped=skipped,
        consistency=consistency,
    )


def sweep(
    jobs: list[Job], batch_sizes: Sequence[int], device: str, config: MeasureConfig
) -> tuple[list[BenchRow], list[Skip]]:
    """Every job at every batch size: result rows, and skips with reasons."""
    skipped = [Skip(job.label, None, job.error) for job in jobs if job.error]
    for skip in skipped:
        logger.info("skipped %s", skip.text())
    rows: list[BenchRow] = []
    for batch_size in batch_sizes:
        torch.compiler.reset()  # compiled runners of the last batch size are gone with it
        ready: dict[str, tuple[Runner, np.ndarray, int | None]] = {}
        for job in (j for j in jobs if not j.error):
            logger.info("%s, batch %d: building and warming up ...", job.label, batch_size)
            try:
                ready[job.label] = _prepare(job, batch_size, device, config)
            except VariantSkipped as exc:
                skipped.append(Skip(job.label, batch_size, str(exc)))
                logger.info("skipped %s, batch %d: %s", job.label, batch_size, exc)
        rows += _measure_batch(ready, batch_size, device, config)
    return rows, skipped


def _prepare(
    job: Job, batch_size: int, device: str, config: MeasureConfig
) -> tuple[Runner, np.ndarray, int | None]:
    """Build the job's runner, prove it takes this batch, warm it up; with the peak memory
    the runner added while doing so. VariantSkipped with the reason when it cannot."""
    with PeakMemory(device) as peak:
        try:
            runner = job.build(batch_size)
            static = runner.info.static_batch
            if static and static != batch_size:
                raise VariantSkipped(f"the artifact was exported with a fixed batch of {static}")
            batch = _random_batch(runner.info, batch_size)
            logits = np.asarray(runner(batch))  # compiles, and proves it takes this batch
            if logits.shape[0] != batch_size:
                raise VariantSkipped(f"returned {logits.shape[0]} rows for a batch of {batch_size}")
        except VariantSkipped:
            raise
        except DlkitError as exc:
            raise VariantSkipped(str(exc)) from exc
        except Exception as exc:  # one broken variant must not end a sweep; say why it failed
            raise VariantSkipped(f"failed: {type(exc).__name__}: {first_line(exc)}") from exc
        warm_up(_end_to_end_step(runner, batch, device), config)
    return runner, batch, peak.bytes


def _measure_batch(
    ready: dict[str, tuple[Runner, np.ndarray, int | None]],
    batch_size: int,
    device: str,
    config: MeasureConfig,
) -> list[BenchRow]:
    """End-to-end time of every runner, interleaved; on CUDA also GPU time alone."""
    measured = dataclasses.replace(config, warmup=0)  # warmed up in _prepare
    steps = {label: _end_to_end_step(r, b, device) for label, (r, b, _) in ready.items()}
    end_to_end = measure_interleaved(steps, measured)
    rows = [
        BenchRow.from_measurement(label, device, batch_size, end_to_end[label], peak)
        for label, (_, _, peak) in ready.items()
    ]
    if device == Device.CUDA:
        calls = {label: _device_call(r, b) for label, (r, b, _) in ready.items()}
        on_device = {label: cuda_event_step(call) for label, call in calls.items() if call}
        for label, m in measure_interleaved(on_device, config).items():
            next(r for r in rows if r.variant == label).add_device_time(m)
    for row in rows:
        logger.info("%s, batch %d: %s", row.variant, batch_size, _summary(row))
    return rows


def _recheck(jobs: list[Job], rows: list[BenchRow], device, config) -> list[dict[str, Any]]:
    """Measure the first row of each batch size again, alone: do the two runs agree?"""
    firsts: dict[int, BenchRow] = {}
    for row in rows:
        firsts.setdefault(row.batch_size, row)
    result = []
    for batch_size, row in firsts.items():
        job = next(j for j in jobs if j.label == row.variant)
        logger.info("%s, batch %d, measured again ...", job.label, batch_size)
        try:
            (again,) = _measure_batch(
                {job.label: _prepare(job, batch_size, device, config)}, batch_size, device, config
            )
        except VariantSkipped as exc:
            logger.info("  could not measure it again: %s", exc)
            continue
        result.append(agreement(row, again))
    return result


# --------------------------------------------------------------------------------- planning


def plan_jobs(
    artifacts: Sequence[str | os.PathLike],
    model: str | None,
    variants: Sequence[str] | None,
    device: str,
    threads: int,
    workdir: Path,
    model_shape: tuple[int, int, int] = (3, 224, 1000),
) -> list[Job]:
    """One job per (source, variant) and per ONNX/TorchScript file, in the order given.
    `model_shape` is (channels, image size, classes) for `model`."""
    names = resolve_variants(list(variants) if variants else None, device)

    def variant_jobs(label: str, source: Source) -> list[Job]:
        jobs = []
        for name in names:
            full = f"{label}:{name}" if len(artifacts) > 1 else name
            if name in VARIANTS:
                jobs.append(Job(full, lambda b, v=VARIANTS[name]: build_runner(v, source, b)))
            else:
                jobs.append(Job(full, error=f"unknown variant; choose from {', '.join(VARIANTS)}"))
        return jobs

    if model:
        return variant_jobs(model, _model_source(model, model_shape, device, threads, workdir))
    jobs: list[Job] = []
    has_checkpoint = False
    for i, artifact in enumerate(artifacts):
        path = Path(artifact)
        try:
            if detect_format(path) == Format.CHECKPOINT:
                net, info = load_model(path)
                (workdir / f"source{i}").mkdir()  # one folder per checkpoint: stems may repeat
                source = Source(net, info, device, threads, workdir / f"source{i}")
                jobs += variant_jobs(path.stem, source)
                has_checkpoint = True
            else:
                read_info(path)
                jobs.append(
                    Job(path.name, lambda b, p=path: open_runner(p, device, threads=threads))
                )
        except DlkitError as exc:
            jobs.append(Job(path.name, error=f"cannot load: {exc}"))
    if variants and not has_checkpoint:
        raise DlkitError(
            "--variants builds variants from --model or a checkpoint; ONNX and TorchScript "
            "files are benchmarked as they are"
        )
    return jobs


def _model_source(name: str, shape, device: str, threads: int, workdir: Path) -> Source:
    channels, image_size, num_classes = shape
    torch.manual_seed(0)
    model, spec = create_model(name, num_classes, channels, image_size)
    info = ArtifactInfo(
        classes=tuple(f"class{i}" for i in range(num_classes)),
        preprocessing=Preprocessing.default(channels, image_size),
        model=spec,
        source=DataSource(dataset=None),  # random weights: parity checks use random inputs
    )
    return Source(model.eval(), info, device, threads, workdir)


# ------------------------------------------------------------------------------------ steps


def _random_batch(info: ArtifactInfo, batch_size: int) -> np.ndarray:
    shape = info.preprocessing.input_shape
    return np.random.default_rng(0).standard_normal((batch_size, *shape), dtype=np.float32)


def _end_to_end_step(runner: Runner, batch: np.ndarray, device: str):
    synchronize = torch.cuda.synchronize if device == Device.CUDA else None
    return wall_clock_step(runner, batch, synchronize=synchronize)


def _device_call(runner: Runner, batch: np.ndarray) -> Callable[[], Any] | None:
    """The runner's model call on an input already on the GPU (same autocast and memory
    format as the runner uses), or None for backends that do not expose one."""
    if isinstance(runner, EagerRunner):
        module, dtype, layout = runner.model, runner.autocast_dtype, runner.memory_format
        cast = runner.dtype
    elif isinstance(runner, TorchScriptRunner):
        module, dtype, layout, cast = runner.module, None, torch.preserve_format, torch.float32
    else:
        return None
    x = torch.from_numpy(batch).to(runner.device, dtype=cast, memory_format=layout)

    def call() -> Any:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=dtype, enabled=dtype is not None),
        ):
            return module(x)

    return call


def _summary(row: BenchRow) -> str:
    stability = row.stability
    verdict = "stable" if stability["stable"] else "NOT stable"
    return (
        f"p50 {row.latency_ms['p50']:.3f} ms, {row.throughput:.1f} samples/s "
        f"({stability['windows']} windows, spread {stability['spread']:.1%}, {verdict})"
    )
