"""`deploy(config)`: train (when no checkpoint is given) → build (every candidate variant of
every format that runs here, made and verified once through the artifact store) → accuracy →
benchmark → select → package → smoke test, each stage timed and named in the report. A failure
leaves the model repository as it was (packaging is rehearsed on a copy first), and says so.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.artifacts import detect_format
from toolkit.artifacts.checkpoint import load_checkpoint
from toolkit.bench.environment import default_threads
from toolkit.choices import Device, Format, Objective, plain
from toolkit.deploy import stages
from toolkit.deploy.report import DeployReport, served_summary, unsettled_figures, write_report
from toolkit.deploy.selection import VariantReport, select_variant
from toolkit.devices import resolve_device
from toolkit.errors import DlkitError
from toolkit.log import logger
from toolkit.training.config import TrainConfig
from toolkit.training.run import train
from toolkit.variants.gate import Gate, GateStatus
from toolkit.variants.registry import (
    BASELINE,
    FALLBACK_FORMAT,
    deploy_candidates,
    file_variants,
    fp32_variant,
    get_variant,
)
from toolkit.variants.source import Source


@dataclass
class DeployConfig:
    """Settings of one `dlkit deploy` run."""

    checkpoint: str | None = None
    data: str | None = None
    dataset: str | None = None
    device: str = "cpu"
    max_accuracy_drop: float = 1.0
    objective: str = "latency"
    batch_sizes: tuple[int, ...] = (1, 8)
    repo: str = "model_repository"
    name: str = "classifier"
    smoke_test: bool = True
    serve: bool = False
    out: str | None = None
    epochs: int | None = None
    model: str | None = None  # what to train when no checkpoint is given
    image_size: int | None = None
    variants: tuple[str, ...] | None = None  # the device's candidates by default
    bench_seconds: float = 0.5
    threads: int | None = None
    tune: bool = False
    tune_objective: str = "throughput"  # on the server; `objective` picks the variant
    tune_minutes: float = 2.0
    tune_concurrency: tuple[int, ...] = (1, 4, 16)
    tune_window_seconds: float = 1.0
    calib_samples: int | None = None  # static int8: 256, or all training images if fewer
    channels: int | None = None  # training settings when no checkpoint is given
    lr: float | None = None
    batch_size: int | None = None
    preprocess: bool = False  # package an image-bytes ensemble with the selected model
    backend: str | None = None  # Triton backend; None: what this machine's server can serve

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


class Stages:
    """Runs named stages, timing each and recording which one is running."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current: str | None = None

    def __call__(self, name: str) -> Stages:
        self.current = name
        logger.info("[%d] %s ...", len(self.seconds) + 1, name)
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.seconds[self.current] = round(time.perf_counter() - self.start, 2)
            logger.info("    %s done in %.1fs", self.current, self.seconds[self.current])


def deploy(config: DeployConfig) -> DeployReport:
    """Run every stage; return the report (also written to the run folder)."""
    config.objective = Objective.parse(config.objective, "objective")
    config.device = Device.parse(config.device, "device")
    if config.device not in Device.targets():
        raise DlkitError("deploy optimises for --device cpu or cuda")
    resolve_device(config.device)
    training = {"--data": config.data, "--dataset": config.dataset, "--epochs": config.epochs}
    training |= {"--model": config.model, "--image-size": config.image_size}
    training |= {
        "--channels": config.channels,
        "--lr": config.lr,
        "--batch-size": config.batch_size,
    }
    given = [option for option, value in training.items() if value]
    if config.checkpoint and given:
        raise DlkitError(f"{', '.join(given)} choose what to train: not with a CHECKPOINT")
    _candidates(config)  # an unknown or unpackable --variants fails before any work
    config.threads = config.threads or default_threads()
    run_dir = Path(config.out or f"runs/deploy-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    timer = Stages()
    report = DeployReport(config=config.to_dict(), run_dir=str(run_dir))
    try:
        _run(config, run_dir, timer, report)
    except (DlkitError, KeyboardInterrupt) as exc:
        message = str(exc) if isinstance(exc, DlkitError) else "interrupted"
        report.failed_stage, report.error = timer.current, message
        report.stage_seconds = timer.seconds
        write_report(report)
        changed = (
            "; the repository was changed: see the report"
            if report.repository_changed
            else f"; the repository {config.repo} was not changed"
        )
        trained = (report.training or {}).get("checkpoint")
        resume = (
            f". The trained model is {trained}: `dlkit deploy {trained}` continues from it"
            if trained and timer.current != "train"
            else ""
        )
        raise DlkitError(
            f"deploy failed at stage '{timer.current}': {message} (report: "
            f"{run_dir}/report.md{changed}){resume}"
        ) from exc
    report.stage_seconds = timer.seconds
    report.total_seconds = round(sum(timer.seconds.values()), 2)
    write_report(report)
    return report


def _run(config: DeployConfig, run_dir: Path, timer: Stages, report: DeployReport) -> None:
    if config.checkpoint:
        checkpoint = Path(config.checkpoint)
        if detect_format(checkpoint) != Format.CHECKPOINT:
            raise DlkitError(f"{checkpoint} is not a dlkit checkpoint; deploy starts from one")
        load_checkpoint(checkpoint)  # its metadata and weights checked before any stage
    else:
        with timer("train"):
            checkpoint, learned = _train(config, run_dir)
        report.training = {"checkpoint": str(checkpoint), "reused": learned is None}
        if learned is False:
            report.training["learned"] = False
    report.checkpoint = str(checkpoint)
    source = Source.from_checkpoint(
        checkpoint, threads=config.threads, calibration_count=config.calib_samples
    )
    rows = [VariantReport.of(get_variant(n), config.device) for n in _candidates(config, source)]
    baseline = VariantReport.of(get_variant(BASELINE), config.device)
    baseline.path, baseline.servable = str(checkpoint), False
    baseline.gate = Gate(GateStatus.BASELINE)
    baseline.size_bytes = checkpoint.stat().st_size
    baseline.weights_bytes = stages.weights_bytes(checkpoint, Format.CHECKPOINT)

    with timer("build"):
        if config.calib_samples:  # asked for: a count the data cannot give stops here
            source.calibration()
        stored = stages.build_stage(source, rows, run_dir / "artifacts")
    with timer("accuracy"):
        stages.accuracy_stage(source, rows, stored, baseline, config.max_accuracy_drop)
    for row in rows:
        row.verified = row.passed
        if row.path:
            row.weights_bytes = stages.weights_bytes(row.path, row.format)
    with timer("benchmark"):
        stages.benchmark_stage(
            checkpoint, baseline, rows, config.device, config.batch_sizes, config.threads,
            config.bench_seconds, config.objective,
        )  # fmt: skip
    with timer("select"):
        selected = select_variant(rows, config.objective)
        # The fallback need not be fast here, only right: on a GPU machine whose ONNX Runtime
        # has no CUDA provider it cannot be benchmarked, yet Triton's own backend can serve it.
        fallback = next(r for r in rows if r.name == fp32_variant(FALLBACK_FORMAT).name)
        if not fallback.verified:
            raise DlkitError(f"the fp32 {FALLBACK_FORMAT} fallback did not pass: {fallback.gate}")
    report.variants = [baseline, *rows]
    report.selected = selected
    report.speedup_vs_eager_fp32 = _speedup(selected, baseline, config.objective)
    report.unsettled = unsettled_figures(selected, baseline, config.objective, config.batch_sizes)
    report.speedup_stable = not report.unsettled
    _package_and_serve(config, selected, fallback, timer, report)


def _package_and_serve(config, selected, fallback, timer: Stages, report: DeployReport) -> None:
    from toolkit.deploy.serving import package_stage, smoke_test_stage, triton_missing

    missing = triton_missing()
    if missing:
        report.skipped_stages |= {"package": missing, "smoke test": missing}
        if config.tune:
            report.skipped_stages["tune"] = missing
        logger.warning("skipped packaging and the smoke test: %s", missing)
        return
    with timer("package"):
        report.packaged = package_stage(config, selected, fallback, report)
    report.repository = str(Path(config.repo).resolve())
    if config.tune:
        with timer("tune"):
            report.served = _tune(config, report)
    if config.smoke_test or config.serve:
        with timer("smoke test"):
            report.smoke_test = smoke_test_stage(config, selected, report)


def _tune(config: DeployConfig, report: DeployReport) -> dict[str, Any]:
    """`dlkit tune` on the model just packaged: its serving config, measured on the real
    server; a better one is written as a new version. Served figures for the report."""
    from toolkit.tune.run import TuneConfig, tune

    tuned = tune(
        TuneConfig(
            repo=config.repo,
            name=config.name,
            objective=config.tune_objective,
            concurrency=config.tune_concurrency,
            budget_minutes=config.tune_minutes,
            device=config.device,
            max_accuracy_drop=config.max_accuracy_drop,
            report=str(Path(report.run_dir) / "tune"),
            window_seconds=config.tune_window_seconds,
        )
    )
    if tuned.written:
        report.repository_changed = True
    return served_summary(tuned)


def _candidates(config: DeployConfig, source: Source | None = None) -> list[str]:
    """The file variants to try: `--variants` (checked against what this device can run,
    the fp32 fallback always included), or every format's candidates for this device, this
    CPU and this model (`source`'s profile; without a source, for any model)."""
    fallback = fp32_variant(FALLBACK_FORMAT).name
    if not config.variants:
        profile = source.profile() if source else None
        return list(dict.fromkeys([fallback, *deploy_candidates(config.device, profile)]))
    names = [get_variant(n).name for n in config.variants]
    found = file_variants()
    wrong = [n for n in names if n not in found or config.device not in found[n].devices]
    if wrong:
        allowed = [n for n, v in found.items() if config.device in v.devices]
        raise DlkitError(
            f"deploy on {config.device} can package {', '.join(allowed)}; not {', '.join(wrong)}"
        )
    return list(dict.fromkeys([fallback, *names]))


def _train(config: DeployConfig, run_dir: Path) -> tuple[Path, bool | None]:
    """Train on the given data (default: the embedded digits), or reuse an identical run.
    Returns the best checkpoint and whether the model learnt anything (None when reused)."""
    options: dict[str, Any] = {"quiet": True, "out": str(run_dir / "train")}
    if config.model:
        options["model"] = config.model
    if config.image_size:
        options["image_size"] = config.image_size
    if config.data:
        options["data"] = config.data
    elif config.dataset:
        options["dataset"] = config.dataset
    for name in ("epochs", "channels", "lr", "batch_size"):
        if getattr(config, name):
            options[name] = getattr(config, name)
    train_config = TrainConfig(**options).resolved()
    folder = run_dir / "train"
    if (folder / "best.pt").exists() and (folder / "config.json").exists():
        if _same_training(folder / "config.json", train_config):
            return folder / "best.pt", None
        raise DlkitError(f"{folder} holds a training run with other settings; choose another --out")
    summary = train(train_config)
    if not summary.learned:
        logger.warning(
            "warning: the trained model does no better than chance on its validation split; "
            "deploying it anyway, but check the data and the training settings"
        )
    return Path(summary.best_checkpoint), summary.learned


# Settings that change how a run is carried out, not what it learns.
RUN_ONLY = {"out", "quiet", "threads", "workers", "pin_memory"}


def _same_training(saved: Path, config: TrainConfig) -> bool:
    """Whether the run folder's stored config trains the same model as `config` (settings an
    older dlkit did not store count as their defaults)."""
    try:
        stored = TrainConfig.from_dict(json.loads(saved.read_text())).resolved().to_dict()
    except (OSError, ValueError, TypeError, DlkitError):
        return False
    return all(stored.get(k) == v for k, v in config.to_dict().items() if k not in RUN_ONLY)


def _speedup(selected: VariantReport, baseline: VariantReport, objective: str) -> float | None:
    if not (selected.latency_ms and baseline.latency_ms):
        return None
    if objective == Objective.LATENCY:
        return baseline.latency_ms["p50"] / selected.latency_ms["p50"]
    return selected.throughput / baseline.throughput
