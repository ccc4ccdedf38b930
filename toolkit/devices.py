"""Choosing a torch device from what the user asked for and what the machine has."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

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


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (from /proc/cpuinfo on Linux; elsewhere
    the machine name and no flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return model, flags


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def native_bf16(flags: set[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags computes bf16 natively (AVX-512 BF16 or
    AMX); without either, bf16 autocast is emulated and far slower than fp32."""
    return bool(flags & {"avx512_bf16", "amx_bf16"})
