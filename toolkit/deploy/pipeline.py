"""`deploy(config)`: the stages of `dlkit deploy`, each reusing the toolkit's own: train (when
no checkpoint is given) → export (parity gate) → quantize (accuracy gate) → accuracy of every
variant → benchmark → select → package → smoke test on a real tritonserver. A failure leaves the
model repository as it was, and the report names the stage.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.deploy.report import write_report
from toolkit.deploy.selection import CANDIDATES, OBJECTIVES, VariantReport, select_variant
from toolkit.errors import DlkitError
from toolkit.files import atomic_path, sha256_file


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
    bench_seconds: float = 0.5


class _Stages:
    """Runs named stages, timing each and recording which one failed."""

    def __init__(self, progress: Callable[[str], None]):
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self.say = progress

    def __call__(self, name: str):
        self.current = name
        self.say(f"[{len(self.seconds) + 1}] {name} ...")
        return self

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.seconds[self.current] = round(time.perf_counter() - self.start, 2)
            self.say(f"    {self.current} done in {self.seconds[self.current]:.1f}s")


def deploy(config: DeployConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every stage; return the report dict (also written to the run folder)."""
    if config.objective not in OBJECTIVES:
        raise DlkitError(f"unknown objective {config.objective!r}; choose latency or throughput")
    if config.device not in CANDIDATES:
        raise DlkitError(f"unknown device {config.device!r}; choose cpu or cuda")
    from toolkit.devices import resolve_device

    resolve_device(config.device)
    say = progress or (lambda message: print(message, file=sys.stderr))
    run_dir = Path(config.out or f"runs/deploy-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = _Stages(say)
    report: dict[str, Any] = {"config": asdict(config), "run_dir": str(run_dir)}
    try:
        _run(config, run_dir, stages, report)
    except (DlkitError, KeyboardInterrupt) as exc:
        message = str(exc) if isinstance(exc, DlkitError) else "interrupted"
        report |= {
            "failed_stage": stages.current,
            "error": message,
            "stage_seconds": stages.seconds,
        }
        write_report(run_dir, report)
        raise DlkitError(
            f"deploy failed at stage '{stages.current}': {message} (report: {run_dir}/report.md; "
            f"the repository {config.repo} was not changed)"
        ) from exc
    report["stage_seconds"] = stages.seconds
    report["total_seconds"] = round(sum(stages.seconds.values()), 2)
    write_report(run_dir, report)
    return report


def _run(config: DeployConfig, run_dir: Path, stages: _Stages, report: dict[str, Any]) -> None:
    from toolkit.artifact import sniff_format

    if config.checkpoint:
        checkpoint = Path(config.checkpoint)
        if sniff_format(checkpoint) != "checkpoint":
            raise DlkitError(f"{checkpoint} is not a dlkit checkpoint; deploy starts from one")
    else:
        with stages("train"):
            checkpoint, reused = _train(config, run_dir)
        report["training"] = {"checkpoint": str(checkpoint), "reused": reused}
    report["checkpoint"] = str(checkpoint)
    checkpoint_hash = sha256_file(checkpoint)
    artifacts = run_dir / "artifacts"
    manifest = _Manifest(artifacts / "verified.json", checkpoint_hash)

    candidates = CANDIDATES[config.device]
    variants = [VariantReport(c.name, c.format, c.precision, c.simplicity) for c in candidates]
    by_name = {v.name: v for v in variants}
    baseline = VariantReport("eager-fp32", "checkpoint", "fp32", -1, str(checkpoint), False)
    baseline.gate = "baseline"

    with stages("export"):
        _export(checkpoint, artifacts, manifest, candidates, by_name)
    with stages("quantize"):
        _quantize(config, artifacts, manifest, candidates, by_name)
    with stages("accuracy"):
        _accuracy(config, checkpoint, manifest, candidates, by_name, baseline)
    manifest.save()
    with stages("benchmark"):
        _benchmark(config, checkpoint, baseline, variants)
    with stages("select"):
        selected = select_variant(variants, config.objective)
        fallback = by_name["onnx-fp32"]
        if not fallback.passed:
            raise DlkitError(f"the fp32 ONNX fallback did not pass: {fallback.gate}")
    report["variants"] = [v.to_dict() for v in [baseline, *variants]]
    report["selected"] = selected.to_dict()
    report["speedup_vs_eager_fp32"] = _speedup(selected, baseline, config.objective)
    with stages("package"):
        report["packaged"] = _package(config, selected, fallback)
    report["repository"] = str(Path(config.repo).resolve())
    if config.smoke_test or config.serve:
        with stages("smoke test"):
            report["smoke_test"] = _smoke_test(config, selected, report)


# ------------------------------------------------------------------------------------ stages


def _train(config: DeployConfig, run_dir: Path) -> tuple[Path, bool]:
    """Train on the given data (default: the embedded digits), or reuse an identical run."""
    from toolkit.training.config import TrainConfig
    from toolkit.training.run import train

    options: dict[str, Any] = {"quiet": True, "out": str(run_dir / "train")}
    if config.data:
        options["data"] = config.data
    elif config.dataset:
        options["dataset"] = config.dataset
    if config.epochs:
        options["epochs"] = config.epochs
    train_config = TrainConfig(**options).resolved()
    folder = run_dir / "train"
    saved = folder / "config.json"
    if (folder / "best.pt").exists() and saved.exists():
        if json.loads(saved.read_text()) == train_config.to_dict():
            return folder / "best.pt", True
        raise DlkitError(f"{folder} holds a training run with other settings; choose another --out")
    summary = train(train_config)
    return Path(summary["best_checkpoint"]), False


class _Manifest:
    """What was verified in an earlier run, keyed by the checkpoint's and each file's SHA-256,
    so a rerun reuses artifacts instead of redoing them."""

    def __init__(self, path: Path, checkpoint_hash: str):
        self.path = path
        self.checkpoint_hash = checkpoint_hash
        stored = json.loads(path.read_text()) if path.exists() else {}
        self.records = (
            stored.get("variants", {}) if stored.get("checkpoint") == checkpoint_hash else {}
        )

    def reusable(self, name: str) -> dict[str, Any] | None:
        record = self.records.get(name)
        path = record and record.get("path")
        if path and Path(path).is_file() and sha256_file(path) == record.get("sha256"):
            return record
        return None

    def put(self, name: str, record: dict[str, Any]) -> None:
        path = record.get("path")
        if path and Path(path).is_file():
            record["sha256"] = sha256_file(path)
        self.records[name] = record

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(
                json.dumps({"checkpoint": self.checkpoint_hash, "variants": self.records}, indent=2)
            )


def _export(checkpoint, artifacts, manifest, candidates, by_name) -> None:
    from toolkit.export import export_checkpoint

    formats = sorted({c.format for c in candidates if c.quantize_mode is None})
    todo = [f for f in formats if manifest.reusable(f"{f}-fp32") is None]
    for fmt in formats:
        if fmt not in todo:
            _apply(by_name[f"{fmt}-fp32"], manifest.reusable(f"{fmt}-fp32"), reused=True)
    if not todo:
        return
    for result in export_checkpoint(checkpoint, artifacts, tuple(todo), force=True):
        variant = by_name[f"{result.format}-fp32"]
        record = {"path": result.path, "parity": result.parity.to_dict()}
        if result.kept:
            record["size_bytes"] = Path(result.path).stat().st_size
        else:
            record["path"] = None
            record["gate"] = f"failed: parity ({result.parity.summary()})"
        manifest.put(variant.name, record)
        _apply(variant, record)


def _quantize(config, artifacts, manifest, candidates, by_name) -> None:
    from toolkit.quantize import default_output, quantize_artifact

    source = by_name["onnx-fp32"]
    for candidate in candidates:
        if candidate.quantize_mode is None:
            continue
        variant = by_name[candidate.name]
        record = manifest.reusable(candidate.name)
        if record is not None and record.get("max_accuracy_drop") == config.max_accuracy_drop:
            _apply(variant, record, reused=True)
            continue
        if source.path is None:
            variant.gate = "failed: no fp32 ONNX to quantize"
            continue
        target = default_output(source.path, candidate.quantize_mode)
        result = quantize_artifact(
            source.path,
            candidate.quantize_mode,
            target,
            max_accuracy_drop=config.max_accuracy_drop,
            force=True,
        )
        record = {
            "path": result.path if result.passed else None,
            "accuracy": result.accuracy,
            "accuracy_drop_points": result.accuracy_drop_points,
            "top1_agreement": result.top1_agreement,
            "size_bytes": result.size_bytes,
            "max_accuracy_drop": config.max_accuracy_drop,
            "gate": "passed"
            if result.passed
            else f"failed: loses {result.accuracy_drop_points:.2f} points "
            f"(budget {config.max_accuracy_drop:g})",
        }
        manifest.put(candidate.name, record)
        _apply(variant, record)


def _accuracy(config, checkpoint, manifest, candidates, by_name, baseline) -> None:
    """Accuracy of eager fp32 and of the exported fp32 files on the validation split, and
    their gate against the budget (the quantized files were measured and gated by
    `quantize`, against the same split)."""
    from toolkit.data import load_split
    from toolkit.evaluate import predict_dataset
    from toolkit.runtime import open_runner

    eager = open_runner(checkpoint)
    val, _ = load_split(eager.info.source, eager.info.preprocessing, "val")
    reference, labels = predict_dataset(eager, val)
    baseline.accuracy = float((reference.argmax(1) == labels).mean())
    baseline.accuracy_drop_points, baseline.top1_agreement = 0.0, 1.0
    baseline.size_bytes = Path(checkpoint).stat().st_size
    for candidate in candidates:
        variant = by_name[candidate.name]
        if candidate.quantize_mode is not None or variant.path is None:
            continue
        if variant.accuracy is None:
            logits, _ = predict_dataset(open_runner(variant.path), val)
            variant.accuracy = float((logits.argmax(1) == labels).mean())
            variant.accuracy_drop_points = round((baseline.accuracy - variant.accuracy) * 100, 6)
            variant.top1_agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
            measured = ("accuracy", "accuracy_drop_points", "top1_agreement")
            manifest.records[variant.name] |= {k: getattr(variant, k) for k in measured}
        within = variant.accuracy_drop_points <= config.max_accuracy_drop
        variant.gate = (
            "passed"
            if within
            else (
                f"failed: loses {variant.accuracy_drop_points:.2f} points "
                f"(budget {config.max_accuracy_drop:g})"
            )
        )


def _benchmark(
    config: DeployConfig, checkpoint: Path, baseline: VariantReport, variants: list[VariantReport]
) -> None:
    """Benchmark eager fp32 and every variant that passed, in one sweep."""
    from toolkit.bench.harness import MeasureConfig
    from toolkit.bench.run import run_benchmark

    survivors = [v for v in variants if v.passed]
    measure = MeasureConfig(min_time=config.bench_seconds, max_time=10 * config.bench_seconds)
    bench = run_benchmark(
        [checkpoint, *[v.path for v in survivors]],
        variants=["eager-fp32"],
        device=config.device,
        batch_sizes=config.batch_sizes,
        config=measure,
    )
    labels = {f"{checkpoint.stem}:eager-fp32": baseline}
    labels |= {Path(v.path).name: v for v in survivors}
    for row in bench["results"]:
        variant = labels.get(row["variant"])
        if variant is not None:
            variant.benchmark.append(row)
    smallest, largest = min(config.batch_sizes), max(config.batch_sizes)
    for variant in [baseline, *survivors]:
        rows = {r["batch_size"]: r for r in variant.benchmark}
        if smallest in rows and largest in rows:
            variant.latency_ms = rows[smallest]["latency_ms"]
            variant.throughput = rows[largest]["throughput"]
        elif variant.passed:
            variant.gate = "failed: could not be benchmarked"
    report_skips = [s for s in bench.get("skipped", []) if s["variant"] in labels]
    for skip in report_skips:
        labels[skip["variant"]].gate = f"failed: benchmark ({skip['reason']})"


def _speedup(selected: VariantReport, baseline: VariantReport, objective: str) -> float | None:
    if not (selected.latency_ms and baseline.latency_ms):
        return None
    if objective == "latency":
        return baseline.latency_ms["p50"] / selected.latency_ms["p50"]
    return selected.throughput / baseline.throughput


def _package(config: DeployConfig, selected: VariantReport, fallback: VariantReport) -> list:
    """Package the selected variant and the fp32 ONNX fallback. Both are first packaged into
    a copy of the repository; only when that works is the real one touched."""
    from toolkit.triton.repository import PackageOptions, package_artifact

    backend = _backend()
    models = [(selected, config.name)]
    if fallback is not selected:
        models.append((fallback, f"{config.name}_fallback"))
    repo = Path(config.repo)

    def package_into(target: Path) -> list[dict[str, Any]]:
        return [
            package_artifact(
                v.path, target, name, options=PackageOptions(backend=backend)
            ).to_dict()
            | {"variant": v.name}
            for v, name in models
        ]

    with tempfile.TemporaryDirectory(prefix="dlkit-stage-") as tmp:
        staging = Path(tmp) / "repo"
        if repo.exists():
            shutil.copytree(repo, staging, copy_function=_link_or_copy)
        package_into(staging)
    return package_into(repo)


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _backend() -> str:
    """native where the server has ONNX Runtime/PyTorch backends (the NGC image), python
    for the pip-installed server (its only backend)."""
    from toolkit.triton.server import find_tritonserver

    try:
        binary = find_tritonserver()
    except DlkitError:
        return "native"
    return "native" if "onnxruntime" in binary.backends() else "python"


def _smoke_test(config: DeployConfig, selected: VariantReport, report: dict[str, Any]) -> dict:
    """Serve the repository, check the served model's predictions against the local runner
    on validation images, then stop (or keep serving with --serve)."""
    import numpy as np

    from toolkit.data import load_split
    from toolkit.evaluate import predict_dataset
    from toolkit.runtime import open_runner
    from toolkit.triton.server import TritonServer, free_port

    local = open_runner(selected.path)
    val, _ = load_split(local.info.source, local.info.preprocessing, "val")
    subset = _subset(val, 64)
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    if config.serve:
        ports = {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002}
    server = TritonServer(config.repo, models=[config.name], **ports)
    server.start()
    try:
        served = open_runner(f"grpc://{server.grpc_url}/{config.name}")
        expected, _ = predict_dataset(local, subset)
        got, _ = predict_dataset(served, subset)
        result = {
            "endpoint": f"grpc://{server.grpc_url}/{config.name}",
            "http": f"http://{server.http_url}",
            "samples": len(subset),
            "max_abs_err": float(np.abs(expected - got).max()),
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
        }
        # fp32 must match to rounding. Dynamic int8 scales activations per batch, so a
        # server that batches differently gives slightly other logits: there only the classes
        # must agree.
        exact = selected.precision == "fp32"
        if result["top1_agreement"] < (1.0 if exact else 0.98) or (
            exact and result["max_abs_err"] > 1e-3
        ):
            raise DlkitError(
                f"the served model disagrees with the local one: {result['max_abs_err']:.3g} "
                f"max abs error, top-1 agreement {result['top1_agreement']:.3f}"
            )
        if config.serve:
            report["smoke_test"] = result
            print(
                f"serving {result['endpoint']} (HTTP {result['http']}); Ctrl-C stops",
                file=sys.stderr,
            )
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how serving ends
                server.wait()
        return result
    finally:
        server.stop()


def _subset(dataset, count: int):
    from torch.utils.data import Subset

    return Subset(dataset, range(min(count, len(dataset))))


def _apply(variant: VariantReport, record: dict[str, Any], reused: bool = False) -> None:
    for key in ("path", "accuracy", "accuracy_drop_points", "top1_agreement", "size_bytes", "gate"):
        if key in record:
            setattr(variant, key, record[key])
    variant.reused = reused
