"""Model artifacts: what they carry, how each format is recognised, read and run.

    metadata.py       ArtifactInfo and its parts (torch-free)
    format_plugin.py  FormatPlugin: what one format knows; FileVariant: a variant it offers
    registry.py       the formats (one entry each), detect_format, read_info, open_runner
    runner.py         the Runner interface every backend implements
    checkpoint.py     dlkit checkpoints and the eager runner
    onnx.py           ONNX: metadata, export, ONNX Runtime runner, its variants, Triton
    onnx_quantize.py  ONNX Runtime's int8 and fp16 transforms
    onnx_cuda.py      ONNX Runtime on the GPU: provider options, IO binding, TensorRT settings
    torchscript.py    TorchScript: metadata, code check, export, runner, Triton
    openvino.py       OpenVINO IR: conversion, metadata, runner, its variants, Triton

This package's import is light: runtimes load when a file of theirs is used.
"""

from toolkit.artifacts.metadata import ArtifactInfo, DataSource, ModelSpec, Preprocessing
from toolkit.artifacts.registry import (
    artifact_files,
    detect_format,
    is_url,
    open_runner,
    plugin,
    plugins,
    read_info,
    register,
)

__all__ = [
    "ArtifactInfo",
    "DataSource",
    "ModelSpec",
    "Preprocessing",
    "artifact_files",
    "detect_format",
    "is_url",
    "open_runner",
    "plugin",
    "plugins",
    "read_info",
    "register",
]
