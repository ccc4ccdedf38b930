"""File variants made and proved once, through the artifact store, and the gate each passes.

`verified_artifact(variant, source)` returns the variant's stored artifact, making its parents
first: made by the variant's own `make` (its format plugin's), opened by its plugin's runner on
the CPU, compared with the eager fp32 model on parity batches (fp32 variants must match to
rounding) and answering the validation split; all of which the record keeps. `verdict` decides
the gate from that record for a caller's accuracy budget, with the same comparison every
variant gets (`toolkit.variants.gate.compare_with_baseline`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.artifacts.format_plugin import FileVariant
from toolkit.artifacts.registry import plugin as format_plugin
from toolkit.artifacts.runner import first_line
from toolkit.choices import Device, Precision
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.log import logger
from toolkit.variants.gate import Gate, compare_with_baseline
from toolkit.variants.parity import ParityReport, verify_parity
from toolkit.variants.registry import file_variants, lineage
from toolkit.variants.source import Source
from toolkit.variants.store import StoredArtifact, entry_key


class VariantSkipped(Exception):
    """This variant cannot run here (the message says why); the sweep goes on without it."""


def verified_artifact(variant: FileVariant, source: Source) -> StoredArtifact:
    """The variant's artifact from the store (made and measured now if it is not there). A
    failure is remembered for the source and raised as VariantSkipped for every variant that
    needs it."""
    done = source._cache.setdefault("artifacts", {})
    if variant.name not in done:
        try:
            parent = None
            if variant.parent:
                parent = verified_artifact(file_variants()[variant.parent], source)
            done[variant.name] = _stored(variant, parent, source)
        except VariantSkipped as exc:
            done[variant.name] = exc
        except DlkitError as exc:
            done[variant.name] = VariantSkipped(str(exc))
    found = done[variant.name]
    if isinstance(found, VariantSkipped):
        raise found
    return found


def _stored(variant: FileVariant, parent: StoredArtifact | None, source: Source) -> StoredArtifact:
    plugin = format_plugin(variant.format)
    why = plugin.unavailable(Device.CPU)  # artifacts are made and checked on the CPU
    if why:
        raise VariantSkipped(why)
    names = [v.name for v in lineage(variant.name)]
    key = entry_key(source.sha256, names, {"calibration": source.calibration_count})
    store = source.artifact_store()
    found = store.lookup(key, variant.name)
    if found is not None:
        return found

    def make(folder):
        target = folder / f"model{plugin.suffix}"
        info = source.info.derive(format=variant.format, precision=variant.precision)
        logger.info("%s: making it from %s ...", variant.name, variant.parent or "the model")
        details = variant.make(target, parent.path if parent else None, info, source)
        return plugin.files(target), {"details": details, **_measure(variant, target, source)}

    return store.put(key, variant.name, make)


def _measure(variant: FileVariant, target, source: Source) -> dict[str, Any]:
    """Parity (fp32 variants) and the answers on the validation split, on the CPU; a file
    that cannot be run is not stored (VariantSkipped says why)."""
    plugin = format_plugin(variant.format)
    options = {"trust": True} if plugin.runs_code else {}  # made just now from this model
    try:
        runner = plugin.open_runner(target, Device.CPU, threads=source.threads, **options)
        record: dict[str, Any] = {}
        if variant.precision == Precision.FP32:
            batches, kind = source.parity_batches()
            report = verify_parity(source.reference(), runner, batches, samples=kind)
            record["parity"] = report.to_dict()
        answers = source.reference_answers()
        if answers is not None:
            logits, _ = predict_dataset(runner, source.validation())
            record["predictions"] = logits.argmax(1).tolist()
    except DlkitError as exc:
        raise VariantSkipped(f"cannot be checked here: {exc}") from exc
    except Exception as exc:  # a runtime that cannot run its own file: say so, keep going
        message = f"{type(exc).__name__}: {first_line(exc)}"
        raise VariantSkipped(f"cannot be checked here: {message}") from exc
    return record


def parity_report(stored: StoredArtifact) -> ParityReport | None:
    found = stored.record.get("parity")
    if not found:
        return None
    return ParityReport(**{k: v for k, v in found.items() if k != "passed"})


def verdict(stored: StoredArtifact, source: Source, max_accuracy_drop: float) -> dict[str, Any]:
    """The gate of a stored variant for this budget, with what it rests on: `gate` (a Gate),
    and the accuracy comparison's fields (`accuracy`, `accuracy_drop_points`, ...) and `note`
    where the validation split was there to measure them."""
    record = stored.record
    parity = parity_report(stored)
    if parity is not None and not parity.passed:
        return {"gate": Gate.failed(f"parity ({parity.summary()})")}
    answers = source.reference_answers()
    predictions = record.get("predictions")
    if answers is None or predictions is None:
        return {"gate": Gate.passed(), "note": "accuracy not measured: no validation data here"}
    reference, labels = answers
    classes = source.info.num_classes
    comparison = compare_with_baseline(
        _one_hot(np.asarray(predictions), classes),
        _one_hot(reference, classes),
        labels,
        max_accuracy_drop,
    )
    return comparison.to_dict() | {"gate": comparison.gate}


def _one_hot(classes: np.ndarray, count: int) -> np.ndarray:
    """Predicted classes as logits whose argmax they are (what the comparison reads)."""
    return np.eye(count, dtype=np.float32)[classes]
