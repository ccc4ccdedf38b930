"""Accuracy, per-class accuracy and confusion matrix of any Runner; top-k predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from toolkit.artifacts.contract import check_scores
from toolkit.artifacts.runner import Runner
from toolkit.errors import DlkitError


def predict_dataset(
    runner: Runner, dataset: Dataset, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Logits for every sample of `dataset`, with the labels, in dataset order."""
    logits, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits.append(runner(x.numpy()))
        labels.append(y.numpy())
    logits = np.concatenate(logits)
    check_scores([logits], runner.info, len(logits), f"the {runner.name} model")
    return logits, np.concatenate(labels)


def classification_report(
    logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """`accuracy` (a fraction), `num_samples`, `per_class` accuracy and `confusion_matrix`
    (rows: true class, columns: predicted class)."""
    n = len(classes)
    predicted = logits.argmax(1)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        total = int(matrix[i].sum())
        per_class[name] = {
            "accuracy": float(matrix[i, i] / total) if total else None,
            "num_samples": total,
        }
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "num_samples": len(labels),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
    }


def model_labels(data_classes: Sequence[str], model_classes: Sequence[str]) -> np.ndarray:
    """For each of the data's classes, its index among the model's, matched by name (the data
    may hold some of the model's classes only); a class the model does not know is an error
    naming it."""
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in data_classes if name not in index]
    if unknown:
        known = ", ".join(model_classes[:20]) + (", ..." if len(model_classes) > 20 else "")
        raise DlkitError(
            f"the data has classes the model does not know: {', '.join(map(repr, unknown))} "
            f"(the model's classes are {known}); evaluate on folders named after those"
        )
    return np.array([index[name] for name in data_classes], dtype=np.int64)


def evaluate(
    runner: Runner,
    dataset: Dataset,
    batch_size: int = 64,
    data_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Classification report of `runner` on `dataset`. With `data_classes` (the class names
    the dataset's labels index), labels are matched to the model's classes by name."""
    logits, labels = predict_dataset(runner, dataset, batch_size)
    if data_classes is not None:
        labels = model_labels(data_classes, runner.info.classes)[labels]
    return classification_report(logits, labels, runner.info.classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, classes: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row, the k most probable classes as `{"label", "index", "probability"}`."""
    probs = softmax(logits.astype(np.float64))
    k = min(k, len(classes))
    order = np.argsort(-probs, axis=1)[:, :k]
    return [
        [{"label": classes[j], "index": int(j), "probability": float(row[j])} for j in idx]
        for row, idx in zip(probs, order, strict=True)
    ]
