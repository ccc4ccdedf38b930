"""The sweep: every variant at every batch size, skip reasons, ranking and speed-ups."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.bench.environment import PeakMemory, describe_environment
from toolkit.bench.harness import (
    MeasureConfig,
    Measurement,
    cuda_event_step,
    measure,
    wall_clock_step,
)
from toolkit.bench.variants import BASELINE, VARIANTS, Source, VariantSkipped, resolve_variants
from toolkit.errors import DlkitError

DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass
class Job:
    """One row label of the sweep: how to build its runner for a batch size, or why it cannot."""

    label: str
    build: Callable[[int], Any] | None = None
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
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark model variants and return the report: environment, settings, results
    (the `dlkit bench --json` rows), skipped (with reasons) and, with `recheck`, whether a
    second run of the first variant agrees with the first within the reported spread.

    Checkpoints and `model` (a `create_model` name, random weights) are sources the variants
    are built from; ONNX and TorchScript files are benchmarked as they are.

    Raises DlkitError for unusable settings, and when nothing at all could be benchmarked.
    """
    import torch

    from toolkit.devices import resolve_device

    if device not in ("cpu", "cuda"):
        raise DlkitError(f"unknown device {device!r}; choose cpu or cuda")
    resolve_device(device)  # --device cuda without CUDA stops here, before any work
    if bool(artifacts) == bool(model):
        raise DlkitError("give either ARTIFACT paths or --model NAME (not both, not neither)")
    if not batch_sizes or min(batch_sizes) < 1:
        raise DlkitError("batch sizes must be positive integers, e.g. --batch-sizes 1,8,32")
    if threads is not None:
        if threads < 1:
            raise DlkitError("--threads must be at least 1")
        torch.set_num_threads(threads)
    config = config or MeasureConfig()
    say = progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="dlkit-bench-") as workdir:
        jobs = plan_jobs(
            artifacts,
            model,
            variants,
            device,
            threads,
            Path(workdir),
            image_size=image_size,
            num_classes=num_classes,
            channels=channels,
        )
        rows, skipped = sweep(jobs, batch_sizes, device, config, say)
        consistency = _recheck(jobs, rows, device, config, say) if recheck else []
    if not rows:
        reasons = "; ".join(skip_text(s) for s in skipped)
        raise DlkitError(f"nothing could be benchmarked: {reasons}")
    rank(rows)
    report = {
        "environment": describe_environment(device, threads),
        "settings": {
            "model": model or [str(a) for a in artifacts],
            "device": device,
            "batch_sizes": list(batch_sizes),
            "variants": [job.label for job in jobs],
            "ranked_by": RANKED_BY[device],
            **asdict(config),
        },
        "results": rows,
        "skipped": skipped,
    }
    if recheck:
        report["consistency"] = consistency
    return report


def sweep(
    jobs: list[Job],
    batch_sizes: Sequence[int],
    device: str,
    config: MeasureConfig,
    say: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure every job at every batch size: result rows, and skipped entries with reasons."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for job in jobs:
        if job.error:
            skipped.append({"variant": job.label, "batch_size": None, "reason": job.error})
            say(f"skipped {job.label}: {job.error}")
            continue
        for batch_size in batch_sizes:
            say(f"{job.label}, batch {batch_size} ...")
            try:
                row = bench_one(job, batch_size, device, config)
            except VariantSkipped as exc:
                skipped.append({"variant": job.label, "batch_size": batch_size, "reason": str(exc)})
                say(f"skipped {job.label}, batch {batch_size}: {exc}")
                continue
            say(_summary(row))
            rows.append(row)
    return rows, skipped


def _recheck(
    jobs: list[Job],
    rows: list[dict[str, Any]],
    device: str,
    config: MeasureConfig,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Measure the first row of each batch size again: do the two runs agree?"""
    firsts: dict[int, dict[str, Any]] = {}
    for row in rows:
        firsts.setdefault(row["batch_size"], row)
    agreement = []
    for batch_size, row in firsts.items():
        job = next(j for j in jobs if j.label == row["variant"])
        say(f"{job.label}, batch {batch_size}, measured again ...")
        try:
            agreement.append(_agreement(row, bench_one(job, batch_size, device, config)))
        except VariantSkipped as exc:
            say(f"  could not measure it again: {exc}")
    return agreement


RANKED_BY = {
    "cpu": "p50 latency (end to end: numpy batch in, numpy logits out)",
    "cuda": "p50 device time (CUDA events, input already on the GPU); "
    "latency_ms is end to end and includes the host-device copies",
}


def plan_jobs(
    artifacts: Sequence[str | os.PathLike],
    model: str | None,
    variants: Sequence[str] | None,
    device: str,
    threads: int | None,
    workdir: Path,
    *,
    image_size: int,
    num_classes: int,
    channels: int,
) -> list[Job]:
    """One job per (source, variant) and per ONNX/TorchScript file, in the order given."""
    from toolkit.artifact import read_artifact_info, sniff_format

    names = resolve_variants(list(variants) if variants else None, device)

    def variant_jobs(label: str, source: Source) -> list[Job]:
        jobs = []
        for name in names:
            full = f"{label}:{name}" if len(artifacts) > 1 else name
            if name in VARIANTS:
                jobs.append(Job(full, functools.partial(VARIANTS[name].build, source)))
            else:
                jobs.append(Job(full, error=f"unknown variant; choose from {', '.join(VARIANTS)}"))
        return jobs

    if model:
        source = _model_source(model, image_size, num_classes, channels, device, threads, workdir)
        return variant_jobs(model, source)
    jobs: list[Job] = []
    has_checkpoint = False
    for i, artifact in enumerate(artifacts):
        path = Path(artifact)
        try:
            if sniff_format(path) == "checkpoint":
                source = _checkpoint_source(path, device, threads, workdir / f"source{i}")
                jobs += variant_jobs(path.stem, source)
                has_checkpoint = True
            else:
                read_artifact_info(path)
                jobs.append(Job(path.name, functools.partial(_open_file, path, device, threads)))
        except DlkitError as exc:
            jobs.append(Job(path.name, error=f"cannot load: {exc}"))
    if variants and not has_checkpoint:
        raise DlkitError(
            "--variants builds variants from --model or a checkpoint; ONNX and TorchScript "
            "files are benchmarked as they are"
        )
    return jobs


def _model_source(name, image_size, num_classes, channels, device, threads, workdir) -> Source:
    import torch

    from toolkit.artifact import ArtifactInfo, DataSource, Preprocessing
    from toolkit.models import create_model

    torch.manual_seed(0)
    model, spec = create_model(name, num_classes, channels, image_size)
    info = ArtifactInfo(
        classes=tuple(f"class{i}" for i in range(num_classes)),
        preprocessing=Preprocessing.default(channels, image_size),
        model=spec,
        source=DataSource(dataset=None),  # random weights: parity checks use random inputs
    )
    return Source(model.eval(), info, device, threads, workdir)


def _checkpoint_source(path: Path, device, threads, workdir: Path) -> Source:
    from toolkit.training.checkpoint import load_model

    model, info = load_model(path)
    workdir.mkdir()  # one folder per checkpoint: two may share a stem
    return Source(model, info, device, threads, workdir)


def _open_file(path: Path, device: str, threads: int | None, batch_size: int):
    from toolkit.runtime import open_runner

    return open_runner(path, device=device, threads=threads)


# ------------------------------------------------------------------------------ one measurement


def bench_one(job: Job, batch_size: int, device: str, config: MeasureConfig) -> dict[str, Any]:
    """Build the job's runner for `batch_size`, call it once, then measure it: end to end
    always, and on CUDA also device time alone. Raises VariantSkipped with the reason when
    the runner cannot be built or cannot take this batch."""
    try:
        runner = job.build(batch_size)
        static = getattr(getattr(runner, "info", None), "static_batch", None)
        if static and static != batch_size:
            raise VariantSkipped(f"the artifact was exported with a fixed batch of {static}")
        batch = _random_batch(runner, batch_size)
        logits = np.asarray(runner(batch))  # compiles, and proves the runner takes this batch
        if logits.shape[0] != batch_size:
            raise VariantSkipped(f"returned {logits.shape[0]} rows for a batch of {batch_size}")
    except VariantSkipped:
        raise
    except DlkitError as exc:
        raise VariantSkipped(str(exc)) from exc
    except Exception as exc:  # one broken variant must not end a sweep; its reason is reported
        raise VariantSkipped(f"failed: {type(exc).__name__}: {_first_line(exc)}") from exc

    synchronize = _cuda_synchronize() if device == "cuda" else None
    with PeakMemory(device) as peak:
        end_to_end = measure(wall_clock_step(runner, batch, synchronize=synchronize), config)
        on_device = _device_call(runner, batch) if device == "cuda" else None
        device_only = measure(cuda_event_step(on_device), config) if on_device else None
    row = result_row(job.label, device, batch_size, end_to_end, peak.bytes)
    if device_only is not None:
        row["device_latency_ms"] = device_only.latency_ms
        row["device_throughput"] = device_only.throughput(batch_size)
        row["device_stability"] = device_only.to_dict()
    return row


def result_row(
    variant: str, device: str, batch_size: int, measurement: Measurement, peak_bytes: int | None
) -> dict[str, Any]:
    """One `results` entry of the JSON report (serving benchmarks use the same shape)."""
    return {
        "variant": variant,
        "device": device,
        "batch_size": batch_size,
        "latency_ms": measurement.latency_ms,
        "throughput": measurement.throughput(batch_size),
        "peak_memory_bytes": peak_bytes,
        "includes_host_copies": device == "cuda",
        "stability": measurement.to_dict(),
    }


def _random_batch(runner: Any, batch_size: int) -> np.ndarray:
    shape = runner.info.preprocessing.input_shape
    return np.random.default_rng(0).standard_normal((batch_size, *shape), dtype=np.float32)


def _cuda_synchronize() -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize


def _device_call(runner: Any, batch: np.ndarray) -> Callable[[], Any] | None:
    """The runner's model call on an input already on the GPU (same autocast and memory
    format as the runner uses), or None for backends that do not expose one."""
    import torch

    from toolkit.runtime import EagerRunner, TorchScriptRunner

    if isinstance(runner, EagerRunner):
        module, dtype, layout = runner.model, runner.autocast_dtype, runner.memory_format
    elif isinstance(runner, TorchScriptRunner):
        module, dtype, layout = runner.module, None, torch.preserve_format
    else:
        return None
    x = torch.from_numpy(batch).to(runner.device, memory_format=layout)

    def call() -> Any:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=dtype, enabled=dtype is not None),
        ):
            return module(x)

    return call


def skip_text(skip: dict[str, Any]) -> str:
    """A skipped entry as one readable phrase."""
    batch = f" (batch {skip['batch_size']})" if skip["batch_size"] else ""
    return f"{skip['variant']}{batch}: {skip['reason']}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


def _summary(row: dict[str, Any]) -> str:
    stability = row["stability"]
    verdict = "stable" if stability["stable"] else "NOT stable"
    return (
        f"  p50 {row['latency_ms']['p50']:.3f} ms, {row['throughput']:.1f} samples/s "
        f"({stability['windows']} windows, spread {stability['spread']:.1%}, {verdict})"
    )


# ------------------------------------------------------------------------- ranking, agreement


def rank_key(row: dict[str, Any]) -> float:
    """What rows are ranked by: device time on CUDA, end-to-end latency otherwise."""
    return row.get("device_latency_ms", row["latency_ms"])["p50"]


def rank(rows: list[dict[str, Any]]) -> None:
    """Mark the fastest row of each batch size and add its speed-up against eager fp32 (the
    first eager-fp32 row of that batch size; null when there is none)."""
    for batch_size in {r["batch_size"] for r in rows}:
        group = [r for r in rows if r["batch_size"] == batch_size]
        baseline = next((r for r in group if r["variant"].split(":")[-1] == BASELINE), None)
        fastest = min(group, key=rank_key)
        for r in group:
            r["fastest"] = r is fastest
            r["speedup_vs_eager_fp32"] = rank_key(baseline) / rank_key(r) if baseline else None


def _agreement(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    a, b = first["latency_ms"]["p50"], second["latency_ms"]["p50"]
    spread = max(first["stability"]["spread"], second["stability"]["spread"])
    difference = abs(b - a) / a
    return {
        "variant": first["variant"],
        "batch_size": first["batch_size"],
        "first_p50_ms": a,
        "second_p50_ms": b,
        "difference": difference,
        "spread": spread,
        "agrees": difference <= spread,
    }
