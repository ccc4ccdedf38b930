"""The stages of `dlkit deploy`, each a function of typed inputs, each reusing the toolkit's own
functions: export (parity gate), quantize and accuracy (`compare_with_baseline`), benchmark
(the `dlkit bench` sweep), package (rehearsed on a copy first), smoke test (a real server).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from toolkit.artifacts import open_runner
from toolkit.artifacts.checkpoint import read_checkpoint_file
from toolkit.bench.harness import MeasureConfig
from toolkit.bench.run import Job, benchmark_jobs
from toolkit.choices import Format
from toolkit.data import load_split
from toolkit.deploy.selection import VariantReport
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.files import sha256_file, write_json
from toolkit.variants.export import export_checkpoint
from toolkit.variants.gate import Gate, compare_with_baseline, serving_parity
from toolkit.variants.quantize import default_output, quantize_artifact
from toolkit.variants.registry import BASELINE, get_variant


class Manifest:
    """What was verified in an earlier run, keyed by the checkpoint's and each file's SHA-256,
    so a rerun reuses artifacts instead of redoing them."""

    def __init__(self, path: Path, checkpoint_hash: str):
        self.path = path
        self.checkpoint_hash = checkpoint_hash
        try:
            stored = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            stored = {}  # a damaged manifest only costs the reuse
        same = isinstance(stored, dict) and stored.get("checkpoint") == checkpoint_hash
        self.records: dict[str, dict[str, Any]] = stored.get("variants", {}) if same else {}

    def reusable(self, name: str, **must_match: Any) -> dict[str, Any] | None:
        record = self.records.get(name)
        path = record and record.get("path")
        if not path or not Path(path).is_file() or sha256_file(path) != record.get("sha256"):
            return None
        if any(record.get(k) != v for k, v in must_match.items()):
            return None
        return record

    def put(self, name: str, record: dict[str, Any]) -> None:
        path = record.get("path")
        if path and Path(path).is_file():
            record["sha256"] = sha256_file(path)
        self.records[name] = record

    def save(self) -> None:
        write_json(self.path, {"checkpoint": self.checkpoint_hash, "variants": self.records})


def apply(variant: VariantReport, record: dict[str, Any], reused: bool = False) -> None:
    """Copy what a stage (or an earlier run) recorded about a variant into its report row."""
    fields = ("path", "accuracy", "accuracy_drop_points", "drop_ci_points", "top1_agreement")
    for key in (*fields, "size_bytes", "note"):
        if key in record:
            setattr(variant, key, record[key])
    if "gate" in record:
        variant.gate = Gate.parse(record["gate"])
    variant.reused = reused


def export_stage(checkpoint: Path, folder: Path, manifest: Manifest, rows) -> None:
    """Export the fp32 file of every file variant (reused when verified before)."""
    fp32 = {r.name: r for r in rows if get_variant(r.name).quantize is None}
    todo = []
    for name, row in fp32.items():
        record = manifest.reusable(name)
        if record is not None:
            apply(row, record, reused=True)
        else:
            todo.append(get_variant(name).format)
    if not todo:
        return
    for result in export_checkpoint(checkpoint, folder, tuple(todo), force=True):
        row = next(r for r in fp32.values() if get_variant(r.name).format == result.format)
        record: dict[str, Any] = {"path": result.path, "parity": result.parity.to_dict()}
        if result.kept:
            record["size_bytes"] = Path(result.path).stat().st_size
        else:
            record |= {
                "path": None,
                "gate": str(Gate.failed(f"parity ({result.parity.summary()})")),
            }
        manifest.put(row.name, record)
        apply(row, record)


def quantize_stage(rows, manifest: Manifest, max_accuracy_drop: float) -> None:
    """Quantize the fp32 ONNX file for every quantized variant; its accuracy gate decides."""
    source = next((r for r in rows if r.name == "onnx-fp32"), None)
    for row in rows:
        mode = get_variant(row.name).quantize
        if mode is None:
            continue
        record = manifest.reusable(row.name, max_accuracy_drop=max_accuracy_drop)
        if record is not None:
            apply(row, record, reused=True)
            continue
        if source is None or source.path is None:
            row.gate = Gate.failed("no fp32 ONNX to quantize")
            continue
        result = quantize_artifact(
            source.path,
            mode,
            default_output(source.path, mode),
            max_accuracy_drop=max_accuracy_drop,
            force=True,
        )
        c = result.comparison
        record = c.to_dict() | {
            "path": result.path if result.passed else None,
            "size_bytes": result.size_bytes,
            "max_accuracy_drop": max_accuracy_drop,
        }
        manifest.put(row.name, record)
        apply(row, record)


def accuracy_stage(checkpoint: Path, rows, baseline: VariantReport, max_drop: float) -> None:
    """Accuracy of eager fp32 and of the exported fp32 files on the validation split, each
    compared with the eager model (`compare_with_baseline`); the quantized files were measured
    and gated by `quantize_artifact` against the fp32 ONNX on the same split."""
    eager = open_runner(checkpoint)
    val, _ = load_split(eager.info.source, eager.info.preprocessing, "val")
    reference, labels = predict_dataset(eager, val)
    baseline.accuracy = float((reference.argmax(1) == labels).mean())
    baseline.accuracy_drop_points, baseline.top1_agreement = 0.0, 1.0
    for row in rows:
        if get_variant(row.name).quantize is not None or row.path is None:
            continue
        logits, _ = predict_dataset(open_runner(row.path), val)
        c = compare_with_baseline(logits, reference, labels, max_drop).to_dict()
        keys = ("accuracy", "accuracy_drop_points", "drop_ci_points", "top1_agreement", "gate")
        apply(row, {k: c[k] for k in (*keys, "note")}, reused=row.reused)


def weights_bytes(path: str | os.PathLike, fmt: str) -> int:
    """The bytes of a model's weights: a checkpoint's model_state (not its optimizer state),
    or the whole file for exported formats (they hold little besides the weights)."""
    if fmt != Format.CHECKPOINT:
        return Path(path).stat().st_size
    state = read_checkpoint_file(path)["model_state"]
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def benchmark_stage(
    checkpoint: Path,
    baseline: VariantReport,
    rows,
    device: str,
    batch_sizes,
    threads: int,
    seconds: float,
) -> None:
    """Benchmark eager fp32 and every variant that passed, interleaved, in one sweep."""
    survivors = [r for r in rows if r.passed]
    jobs = [Job(BASELINE, lambda b: open_runner(checkpoint, device, threads=threads))]
    jobs += [
        Job(r.name, lambda b, p=r.path: open_runner(p, device, threads=threads)) for r in survivors
    ]
    measure = MeasureConfig(min_time=seconds, max_time=10 * seconds)
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
