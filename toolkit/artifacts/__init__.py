"""Model artifacts: what they carry, how each format is recognised, read and run.

    metadata.py     ArtifactInfo and its parts (torch-free)
    registry.py     detect_format, read_info, open_runner: one entry per format
    runner.py       the Runner interface every backend implements
    checkpoint.py   dlkit checkpoints and the eager runner
    onnx.py         ONNX: metadata, export, ONNX Runtime runner
    torchscript.py  TorchScript: metadata, code check, export, runner

This package's import is light: format modules load when a file of theirs is used.
"""

from toolkit.artifacts.metadata import ArtifactInfo, DataSource, ModelSpec, Preprocessing
from toolkit.artifacts.registry import detect_format, handler, is_url, open_runner, read_info

__all__ = [
    "ArtifactInfo",
    "DataSource",
    "ModelSpec",
    "Preprocessing",
    "detect_format",
    "handler",
    "is_url",
    "open_runner",
    "read_info",
]
