"""The machine a figure was measured on, and peak memory while measuring.

Numbers without their environment cannot be compared: every report carries the CPU model and
the instruction sets that decide which kernels run (AVX-512, VNNI, AMX), the cores and threads
used, the GPU with its driver and CUDA versions, and the library versions.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.cpu import cpu_info
from toolkit.devices import usable_cores

# /proc/cpuinfo flag -> the name people know it by.
INSTRUCTION_SETS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX BF16",
    "amx_int8": "AMX INT8",
}


def default_threads() -> int:
    """The thread budget benchmarks use unless told: half the usable cores (at least one).
    On a shared machine, runtimes that each take every core fight other work and each other,
    and figures swing by orders of magnitude; half the cores leaves room for that."""
    return max(1, usable_cores() // 2)


def describe_environment(device: str, threads: int | None = None) -> dict[str, Any]:
    """CPU, GPU and software versions, as one JSON-able dict."""
    import numpy
    import torch

    model, flags = cpu_info()
    return {
        "device": device,
        "cpu": {
            "model": model,
            "architecture": platform.machine(),
            "instruction_sets": [name for flag, name in INSTRUCTION_SETS.items() if flag in flags],
            "torch_kernels": torch.backends.cpu.get_cpu_capability(),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": threads or "default (one per physical core)",
        },
        "gpu": _gpu_info() if device == "cuda" else None,
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "onnxruntime": _version("onnxruntime"),
            "numpy": numpy.__version__,
            "dlkit": __version__,
        },
        "platform": platform.platform(),
        "peak_memory": (
            "what the variant added at its peak while it was built and warmed up: "
            "torch.cuda.max_memory_allocated over the allocation before it"
            if device == "cuda"
            else RSS_SCOPE[_can_reset_peak_rss()]
        ),
    }


def _gpu_info() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "name": props.name,
        "memory_bytes": props.total_memory,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": _nvidia_driver(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        **tf32_settings(),
    }


def tf32_settings() -> dict[str, bool]:
    """Whether "fp32" matmuls and convolutions may run as TF32 (faster, less precise): say which
    ran. Read through `fp32_precision` where torch has it: from 2.9 on, reading the older
    `allow_tf32` flags warns that they are deprecated."""
    import torch

    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if matmul is None:
        return {
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return {
        "tf32_matmul": matmul == "tf32",
        "tf32_cudnn": torch.backends.cudnn.conv.fp32_precision == "tf32",
    }


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in (package, f"{package}-gpu"):
        with contextlib.suppress(PackageNotFoundError):
            return version(name)
    return None


# ------------------------------------------------------------------------------------ memory

RSS_SCOPE = {
    True: "what the variant added at its peak while it was built and warmed up: the process's "
    "peak RSS (VmHWM, reset before it) over its RSS before it",
    False: "process peak RSS since the process started (ru_maxrss): a high-water mark that "
    "never falls, so later variants show at least the figure of earlier ones",
}


def _can_reset_peak_rss() -> bool:
    """Linux ≥ 4.0 resets VmHWM when "5" is written to /proc/self/clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _vm_hwm() is not None


def _status_bytes(key: str) -> int | None:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS) in bytes."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return None


def _vm_hwm() -> int | None:
    return _status_bytes("VmHWM")


def _vm_rss() -> int | None:
    return _status_bytes("VmRSS")


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`, then `peak.bytes`: how much more memory was in
    use at the block's peak than when it began (GPU allocations on CUDA, process RSS on the
    CPU). Where the kernel cannot reset the RSS high-water mark, the process's lifetime peak."""

    def __init__(self, device: str):
        self.device = device
        self.bytes: int | None = None
        self._resettable = False
        self._start = 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._resettable = _can_reset_peak_rss()
            self._start = _vm_rss() or 0
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.bytes = int(torch.cuda.max_memory_allocated()) - self._start
        elif self._resettable:
            self.bytes = max((_vm_hwm() or 0) - self._start, 0)
        else:
            # ru_maxrss is in KiB on Linux, bytes on macOS.
            unit = 1 if sys.platform == "darwin" else 1024
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
