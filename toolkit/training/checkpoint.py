"""Checkpoint files: written atomically, read with `weights_only=True`, never executed."""

from __future__ import annotations

import os
import pickle
import platform
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit import __version__
from toolkit.artifact import ArtifactInfo
from toolkit.errors import DlkitError
from toolkit.files import atomic_path

CHECKPOINT_FORMAT = "dlkit-checkpoint"


def library_versions() -> dict[str, str]:
    import torchvision

    return {
        "dlkit": __version__,
        "torch": str(torch.__version__),  # TorchVersion is not a plain str
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save `state` (tensors and plain containers only) to `path` atomically."""
    state = {"format": CHECKPOINT_FORMAT, "versions": library_versions(), **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` with the failures turned into clear messages."""
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
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise DlkitError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}"
        ) from exc


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
    return Checkpoint(Path(path), ArtifactInfo.from_dict(state["info"]), state)


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, ArtifactInfo]:
    """Rebuild the model of a checkpoint with its weights, in eval mode on the CPU."""
    from toolkit.models import build_model

    ckpt = load_checkpoint(path)
    model = build_model(ckpt.info.model)
    model.load_state_dict(ckpt.state["model_state"])
    return model.eval(), ckpt.info
