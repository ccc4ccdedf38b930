"""dlkit checkpoints: written atomically, read with `weights_only=True`, never executed; and
the eager runner that serves them (and in-memory models).
"""

from __future__ import annotations

import os
import pickle
import platform
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit import __version__
from toolkit.artifacts.format_plugin import FormatPlugin, is_torchscript_archive
from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.runner import Runner, set_torch_threads
from toolkit.choices import Autocast, Device, Format
from toolkit.errors import DlkitError
from toolkit.files import atomic_path
from toolkit.pinned import pinned_staging

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

CHECKPOINT_FORMAT = "dlkit-checkpoint"


def autocast_dtype(mode: str | None) -> torch.dtype | None:
    """The torch dtype of an autocast or cast mode ("fp16", "bf16"), None for "off"."""
    import torch

    mode = Autocast.parse(mode or Autocast.OFF, "autocast")
    return {Autocast.FP16: torch.float16, Autocast.BF16: torch.bfloat16}.get(mode)


def library_versions() -> dict[str, str]:
    import torch
    import torchvision

    return {
        "dlkit": __version__,
        "torch": str(torch.__version__),  # TorchVersion is not a plain str
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save `state` (tensors and plain containers only) to `path` atomically."""
    import torch

    state = {"format": CHECKPOINT_FORMAT, "versions": library_versions(), **state}
    with atomic_path(path) as tmp:
        try:
            # A file object we close ourselves: given a path, torch keeps a failed file open
            # (and its disk space held) until the process exits.
            with open(tmp, "wb") as f:
                torch.save(state, f)
        except (OSError, RuntimeError) as exc:
            raise DlkitError(f"could not write {path}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "No space left" in text or getattr(exc, "errno", None) == 28:
        return "the disk is full"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` with the failures turned into clear messages."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DlkitError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise DlkitError(
            f"{path} holds Python objects other than tensors and plain containers{what}; dlkit "
            "loads checkpoints with weights_only=True so that a file cannot run code. If you "
            "trust it, load it yourself and save only its state_dict()."
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DlkitError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {_reason(exc)}"
        ) from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a file: a plain one, or the model weights of a dlkit checkpoint."""
    import torch

    data = read_checkpoint_file(path)
    if isinstance(data, dict) and isinstance(data.get("model_state"), dict):
        data = data["model_state"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DlkitError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return data


@dataclass
class Checkpoint:
    """A loaded dlkit checkpoint: its metadata and everything else it holds."""

    path: Path
    info: ArtifactInfo
    state: dict[str, Any]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a dlkit checkpoint (not a bare state dict)."""
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DlkitError(
            f"{path} is not a dlkit checkpoint (no model metadata); a bare state dict can be "
            "used with `dlkit train --weights PATH`"
        )
    if not isinstance(state.get("model_state"), dict):
        raise DlkitError(f"{path} is a dlkit checkpoint without model weights (model_state)")
    return Checkpoint(Path(path), parse_info(state.get("info"), path), state)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, ArtifactInfo]:
    """Rebuild the model of a checkpoint with its weights, in eval mode on the CPU."""
    from toolkit.training.models import build_model, load_weights

    ckpt = load_checkpoint(path)
    model = build_model(ckpt.info.model)
    load_weights(model, ckpt.state["model_state"], str(path))
    check_outputs(model, ckpt.info, str(path))
    return model.eval(), ckpt.info


def check_outputs(model: nn.Module, info: ArtifactInfo, source: str) -> None:
    """The model must answer one logit per class name: a mismatch would label every
    prediction wrongly (or fail deep inside a report)."""
    import torch

    with torch.no_grad():
        out = model.eval()(torch.zeros(2, *info.preprocessing.input_shape))
    if tuple(out.shape) != (2, info.num_classes):
        raise DlkitError(
            f"{source}: the model answers {tuple(out.shape[1:])} outputs per image but its "
            f"metadata lists {info.num_classes} classes"
        )


class EagerRunner(Runner):
    """A dlkit checkpoint (or an in-memory model) in eager PyTorch, optionally under autocast
    and channels_last."""

    name = "eager"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str = "cpu",
        threads: int | None = None,
        autocast: str | None = None,
        channels_last: bool = False,
        model: nn.Module | None = None,
        info: ArtifactInfo | None = None,
        cast: str | None = None,
    ):
        import torch

        from toolkit.devices import resolve_device

        set_torch_threads(threads)
        self.device = resolve_device(device)
        if model is None:
            model, info = load_model(path)
        self.model, self.info = model.eval(), info
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        # `cast`: weights and inputs in fp16/bf16 (inference in that precision, no autocast).
        self.dtype = autocast_dtype(cast) or torch.float32
        self.model.to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        self.autocast_dtype = autocast_dtype(autocast)
        self.staging = pinned_staging(self.device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = self.staging.to_device(batch) if self.staging else torch.from_numpy(batch)
        x = x.to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        enabled = self.autocast_dtype is not None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled),
        ):
            logits = self.model(x).float()
            return self.staging.to_host(logits) if self.staging else logits.numpy()


class CheckpointPlugin(FormatPlugin):
    """dlkit checkpoints: what training writes and every variant is made from; run in eager
    PyTorch, never served by Triton (export them first)."""

    name = Format.CHECKPOINT
    suffix = ".pt"
    devices = (Device.CPU, Device.CUDA)

    def sniff(self, path: Path, head: bytes) -> bool:
        return zipfile.is_zipfile(path) and not is_torchscript_archive(path)

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        return load_checkpoint(path).info

    def open_runner(
        self, path: str | os.PathLike, device: str = "cpu", objective: str | None = None, **options
    ) -> Runner:
        return EagerRunner(path, device=device, **options)


PLUGIN = CheckpointPlugin()
