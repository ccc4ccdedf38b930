"""Choosing a torch device from what the user asked for and what the machine has."""

from __future__ import annotations

import os

import torch

from toolkit.errors import DlkitError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA when available; `cuda` without a usable GPU is an error."""
    if name not in DEVICES:
        raise DlkitError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DlkitError(
                "--device cuda was asked for but CUDA is not available here; use --device cpu"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch is not installed with CUDA)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
