"""The stages of `dlkit deploy`, each a function of typed inputs, each reusing the toolkit's own
functions: build (every candidate made and verified once through the artifact store that
`dlkit bench` shares), accuracy (the gate, decided from what the store measured), benchmark
(the `dlkit bench` sweep), package (rehearsed on a copy first), smoke test (a real server).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from toolkit.artifacts import open_runner, plugin
from toolkit.artifacts.checkpoint import load_checkpoint
from toolkit.bench.harness import MeasureConfig
from toolkit.bench.run import Job, benchmark_jobs
from toolkit.choices import Format
from toolkit.data import load_split
from toolkit.deploy.selection import VariantReport
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.files import link_or_copy
from toolkit.variants.gate import Gate, serving_parity
from toolkit.variants.registry import BASELINE, get_variant
from toolkit.variants.source import Source
from toolkit.variants.store import StoredArtifact
from toolkit.variants.verified import VariantSkipped, verdict, verified_artifact

REPORTED = (
    "accuracy",
    "accuracy_drop_points",
    "drop_ci_points",
    "top1_agreement",
    "samples",
    "note",
)


def place(stored: StoredArtifact, folder: Path, name: str) -> Path:
    """The stored artifact's files in the run folder as `<variant><suffix>` (hard links where
    the file system allows), so the run folder holds what its report names."""
    fmt = plugin(get_variant(stored.variant).format)
    target = folder / f"{name}{fmt.suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    for source, destination in zip(stored.files, fmt.files(target), strict=True):
        link_or_copy(source, destination)
    return target


def build_stage(source: Source, rows: list[VariantReport], folder: Path) -> dict:
    """Make or find every candidate in the artifact store (parents first; a parent's failure
    fails its children, naming it); returns the stored artifacts by variant."""
    stored: dict[str, StoredArtifact] = {}
    for row in rows:
        try:
            found = verified_artifact(get_variant(row.name), source)
        except VariantSkipped as exc:
            row.gate = Gate.failed(str(exc))
            continue
        stored[row.name] = found
        row.path = str(place(found, folder, row.name))
        row.reused = found.reused
        row.size_bytes = sum(f.stat().st_size for f in found.files)
        details = found.record.get("details", {})
        if details.get("calibration"):
            row.note = f"calibrated on {details['calibration']}"
    return stored


def accuracy_stage(
    source: Source, rows, stored: dict, baseline: VariantReport, max_drop: float
) -> None:
    """The eager model's accuracy, then every built variant's gate for `max_drop` from what
    the store measured (parity for fp32 variants, answers on the validation split)."""
    answers = source.reference_answers()
    if answers is None:
        raise DlkitError(
            f"no validation data in {source.info.source.describe()}: deploy measures every "
            "variant's accuracy before it packages one"
        )
    predicted, labels = answers
    baseline.accuracy = float((predicted == labels).mean())
    baseline.samples = len(labels)
    baseline.accuracy_drop_points, baseline.top1_agreement = 0.0, 1.0
    baseline.samples = len(labels)
    for row in rows:
        if row.name not in stored:
            continue
        found = verdict(stored[row.name], source, max_drop)
        row.gate = found["gate"]
        for key in REPORTED:
            if key in found and found[key] not in (None, ""):
                value = found[key]
                if key == "note" and row.note:
                    value = f"{row.note}; {value}"
                setattr(row, key, value)


def weights_bytes(path: str | os.PathLike, fmt: str) -> int:
    """The bytes of a model's weights: a checkpoint's model_state (not its optimizer state),
    or the whole file for exported formats (they hold little besides the weights)."""
    if fmt != Format.CHECKPOINT:
        return sum(f.stat().st_size for f in plugin(fmt).files(path))
    state = load_checkpoint(path).state["model_state"]  # checked: a dict of weights
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def benchmark_stage(
    checkpoint: Path,
    baseline: VariantReport,
    rows,
    device: str,
    batch_sizes,
    threads: int,
    seconds: float,
    objective: str = "latency",
) -> None:
    """Benchmark eager fp32 and every variant that passed, interleaved, in one sweep; runtimes
    with a performance hint (OpenVINO) are given the objective."""
    survivors = [r for r in rows if r.passed]
    options = {"threads": threads, "objective": objective}
    jobs = [Job(BASELINE, lambda b: open_runner(checkpoint, device, **options))]
    jobs += [Job(r.name, lambda b, p=r.path: open_runner(p, device, **options)) for r in survivors]
    measure = MeasureConfig(min_time=seconds, max_time=10 * seconds * len(jobs))  # shared
    bench = benchmark_jobs(jobs, batch_sizes, device, threads, measure)
    by_name = {r.name: r for r in [baseline, *survivors]}
    for row in bench.results:
        by_name[row.variant].benchmark.append(row.to_dict())
    smallest, largest = min(batch_sizes), max(batch_sizes)
    for variant in by_name.values():
        rows_by_size = {r.batch_size: r for r in bench.rows(variant=variant.name)}
        if smallest in rows_by_size and largest in rows_by_size:
            variant.latency_ms = rows_by_size[smallest].latency_ms
            variant.throughput = rows_by_size[largest].throughput
            variant.stable = rows_by_size[smallest].stable and rows_by_size[largest].stable
        elif variant.passed:
            variant.gate = Gate.failed("could not be benchmarked")
    for skip in bench.skipped:
        if skip.variant in by_name:
            by_name[skip.variant].gate = Gate.failed(f"benchmark ({skip.reason})")


def subset(dataset: Dataset, count: int) -> Subset:
    return Subset(dataset, range(min(count, len(dataset))))


def smoke_check(local_path: str, endpoint: str, precision: str, samples: int = 64) -> dict:
    """The served model's predictions against the local runner on validation images."""
    local = open_runner(local_path)
    val, _ = load_split(local.info.source, local.info.preprocessing, "val")
    images = subset(val, samples)
    expected, _ = predict_dataset(local, images)
    with open_runner(endpoint) as served:
        got, _ = predict_dataset(served, images)
    result = {
        "endpoint": endpoint,
        "samples": len(images),
        "max_abs_err": float(np.abs(expected - got).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
    }
    parity = serving_parity(precision, result["max_abs_err"], result["top1_agreement"])
    if not parity.ok:
        raise DlkitError(parity.reason)
    return result
