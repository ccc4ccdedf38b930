"""A model served by Triton as a Runner: `open_runner("grpc://host:8001/NAME")`.

Registered in `toolkit.artifacts.registry` for `grpc://` and `http://` URLs, so `dlkit eval`
and `dlkit bench` work against a server exactly as against a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.artifacts.format_plugin import FormatPlugin
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.runner import Runner
from toolkit.choices import Format
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    import numpy as np

# This module is the served format's plugin: the registry imports it to list the formats, so
# tritonclient (which the GPU machine lacks) is imported only when a URL is really used.


class TritonRunner(Runner):
    """The class names, input shape and preprocessing come from the served config, so
    evaluation and benchmarks need nothing else. `device` is the server's business."""

    name = "triton"

    def __init__(self, url: str, device: str = "cpu", model: str | None = None, **options: Any):
        from toolkit.triton.client import TritonClient
        from toolkit.triton.endpoints import parse_urls

        endpoints = parse_urls(url)
        self.model_name = model or endpoints[0].model
        if not self.model_name:
            raise DlkitError(f"no model in {url!r}; use {endpoints[0].url}/MODEL_NAME")
        self.client = TritonClient([e.url for e in endpoints], **options)
        try:
            self.info = self.client.info(self.model_name)
            if self.client.model(self.model_name).takes_images:
                raise DlkitError(
                    f"{self.model_name} takes encoded image files; open its classifier (the "
                    "model without the _ensemble suffix) as a runner"
                )
        except BaseException:
            self.client.close()
            raise

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.client.infer(self.model_name, batch)

    def close(self) -> None:
        """Close the client's connections (and shared-memory regions)."""
        self.client.close()


class ServedPlugin(FormatPlugin):
    """A model behind a Triton endpoint, reached by `grpc://` or `http://` URL."""

    name = Format.SERVED

    def read_info(self, url: str) -> ArtifactInfo:
        from toolkit.triton.client import TritonClient
        from toolkit.triton.endpoints import parse_urls

        endpoints = parse_urls(url)
        if not endpoints[0].model:
            raise DlkitError(f"no model in {url!r}; use {endpoints[0].url}/MODEL_NAME")
        with TritonClient([e.url for e in endpoints]) as client:
            return client.info(endpoints[0].model)

    def open_runner(
        self, url: str, device: str = "cpu", objective: str | None = None, **options: Any
    ) -> Runner:
        return TritonRunner(url, device=device, **options)

    def unavailable(self, device: str) -> str:
        return ""


PLUGIN = ServedPlugin()
