"""What a client knows of a served model, and the errors a call to it can end in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.errors import DlkitError


class RequestRefused(DlkitError):
    """The server answered a request with an error (bad input, a failing model)."""


class ImagesFailed(DlkitError):
    """Some images of a `classify` call could not be classified. `failed` maps the index of
    each to the reason; `results` holds every image's answer, None where it failed."""

    def __init__(self, failed: dict[int, str], results: list[list[dict[str, Any]] | None]):
        self.failed, self.results = failed, results
        listed = "; ".join(list(failed.values())[:5]) + ("; ..." if len(failed) > 5 else "")
        super().__init__(
            f"{len(failed)} of {len(results)} images could not be classified: {listed}"
        )


@dataclass(frozen=True)
class ServedModel:
    """What the client needs to know about a served model, read once from the server."""

    name: str
    input_name: str
    input_datatype: str  # Triton's name: FP32, BYTES, ...
    input_dims: tuple[int, ...]  # without the batch dimension when the model batches
    output_name: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    info: ArtifactInfo | None  # None for models dlkit did not package

    @property
    def takes_images(self) -> bool:
        """True for the preprocessing ensemble: encoded image files in."""
        return self.input_datatype == "BYTES"
