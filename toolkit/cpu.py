"""The CPU dlkit runs on: its model and the instruction sets that decide which kernels run.

Read in one place, from /proc/cpuinfo (no torch), because several choices follow from it: the
int8 types ONNX Runtime's quantizer writes, whether bf16 variants are offered (only where bf16
is native), and what every benchmark report names beside its figures.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


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


def native_bf16(flags: set[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags computes bf16 natively (AVX-512 BF16 or
    AMX); without either, bf16 is emulated and far slower than fp32."""
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class CpuFeatures:
    """The x86 instruction sets that decide how int8 and bf16 kernels run."""

    model: str
    avx2: bool
    avx512: bool
    vnni: bool
    amx: bool
    bf16: bool = False  # native bf16 arithmetic: AVX-512 BF16 or AMX-BF16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def int8_key(self) -> dict[str, Any]:
        """What decides how int8 models are written for this CPU (`int8_types`): artifacts
        made on a CPU with another answer are made again, not reused."""
        return int8_types(self) | {"amx": self.amx}


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once per process)."""
    model, flags = cpu_info()
    return CpuFeatures(
        model=model,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni"} & flags),
        amx="amx_int8" in flags,
        bf16=native_bf16(flags),
    )


def int8_types(features: CpuFeatures) -> dict[str, Any]:
    """Activation/weight types and reduce_range for ONNX Runtime's x86 int8 kernels.

    u8 activations × s8 weights is what the x86 kernels are fast at. Without VNNI they multiply
    with VPMADDUBSW, whose 16-bit intermediate sums can saturate; 7-bit weights
    (`reduce_range`) avoid that. With VNNI (or off x86) the full range is safe.
    """
    x86 = features.avx2 or features.avx512
    reduce_range = x86 and not features.vnni
    reason = (
        "x86 without VNNI: u8s8 with 7-bit weights so VPMADDUBSW cannot saturate"
        if reduce_range
        else "VNNI (or non-x86): u8s8 at full range"
    )
    return {"activation": "uint8", "weight": "int8", "reduce_range": reduce_range, "why": reason}
