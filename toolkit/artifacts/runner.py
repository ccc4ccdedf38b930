"""Runners: one call — a float32 N×C×H×W numpy batch in, logits out — for every backend.

Evaluation, prediction, parity checks and benchmarks are written once against `Runner`; each
format module (`checkpoint`, `torchscript`, `onnx`, and `toolkit.triton.runner`) has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    import numpy as np


class Runner:
    """Base class: checks the input against the artifact's metadata, then runs the backend."""

    info: ArtifactInfo
    name = "runner"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        self.check_input(batch)
        logits = self.run(np.ascontiguousarray(batch, dtype=np.float32))
        check_scores(getattr(logits, "shape", None), len(batch), self.info, self.name)
        return logits

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def device_call(self, batch: np.ndarray) -> Callable[[], Any] | None:
        """The model alone on `batch` already on the GPU, for timing it without the host
        copies (`dlkit bench --device cuda`'s device time); None where a backend has none."""
        return None

    def close(self) -> None:
        """Release what the runner holds open (a served model's connections); idempotent."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_input(self, batch: np.ndarray) -> None:
        """Refuse what the model would reject or answer with nonsense: another shape, a
        non-float dtype, an empty batch, NaN or infinite values."""
        check_batch(batch, self.info, self.name)
        static = self.info.static_batch
        if static and batch.shape[0] != static:
            raise DlkitError(
                f"{self.name} model was exported with a fixed batch of {static}; "
                f"got {batch.shape[0]}"
            )


def check_batch(batch: np.ndarray, info: ArtifactInfo, who: str) -> None:
    """The checks every boundary (runners, the Triton client) applies to a model input."""
    import numpy as np

    expected = info.preprocessing.input_shape
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
        shape = getattr(batch, "shape", type(batch).__name__)
        raise DlkitError(
            f"{who} expects a batch of shape (N, {', '.join(map(str, expected))}) "
            f"({expected[0]} channel{'s' if expected[0] > 1 else ''}, "
            f"{expected[1]}×{expected[2]} pixels); got {shape}"
        )
    if not np.issubdtype(batch.dtype, np.floating):
        raise DlkitError(f"{who} expects float32 input after preprocessing; got {batch.dtype}")
    if batch.shape[0] == 0:
        raise DlkitError(f"{who} got an empty batch; send at least one image")
    # One reduction instead of an element-wise test: NaN and ±inf survive a sum.
    if not np.isfinite(batch.sum(dtype=np.float64)):
        raise DlkitError(f"{who} got NaN or infinite values in its input; check the preprocessing")


def check_scores(shape, rows: int | None, info: ArtifactInfo, who: str) -> None:
    """A model must answer one score per class name for each image: more scores than names
    would label answers with the wrong names (or fail deep in a report). `shape` is the
    output's (`rows` None, or a dimension None or symbolic: not known yet)."""
    known = isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int)
    if known and shape[1] == info.num_classes and rows in (None, shape[0]):
        return
    if not known and rows is None and isinstance(shape, tuple) and len(shape) == 2:
        return  # a symbolic class dimension: checked on the first batch
    raise DlkitError(
        f"{who} answers {shape if shape is not None else 'no array'} for "
        f"{f'a batch of {rows}' if rows is not None else 'a batch'}, but its metadata lists "
        f"{info.num_classes} classes; re-export it with `dlkit export`"
    )


def set_torch_threads(threads: int | None) -> None:
    """Use `threads` intra-op threads in torch (None leaves torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error message (backends' messages run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
