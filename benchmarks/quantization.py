"""Quantization on this CPU: ResNet-18 (224×224, random weights), batch 1, in one run.

    python benchmarks/quantization.py

Torch eager fp32, ONNX Runtime fp32, ONNX dynamic int8, ONNX static int8 (QDQ, per-channel)
and torchao PT2E int8 under torch.compile, measured by `dlkit bench`'s harness; plus the file
sizes of the fp32 and static int8 ONNX models. Goals: static int8 at least 3x faster than eager
fp32, and its file at most 30% of the fp32 file. Writes results/quantization.{json,md}.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from toolkit.artifacts.metadata import ArtifactInfo, DataSource, Preprocessing
from toolkit.artifacts.onnx_quantize import quantize_onnx
from toolkit.bench.harness import MeasureConfig
from toolkit.bench.run import run_benchmark
from toolkit.cpu import cpu_features, int8_types
from toolkit.log import configure_logging
from toolkit.training.models import create_model
from toolkit.variants.export import export_model

VARIANTS = ["eager-fp32", "onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static", "torch-int8-pt2e"]


def file_sizes() -> dict[str, int]:
    """Bytes of the fp32 ONNX export and of its static int8 quantization."""
    torch.manual_seed(0)
    model, spec = create_model("resnet18", 1000, 3, 224)
    info = ArtifactInfo(
        classes=tuple(str(i) for i in range(1000)),
        preprocessing=Preprocessing.default(3, 224),
        model=spec,
        source=DataSource(dataset=None),
    )
    calibration = np.random.default_rng(0).standard_normal((64, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        (fp32,) = export_model(model.eval(), info, tmp, "resnet18", ("onnx",))
        int8 = Path(tmp) / "resnet18.int8-static.onnx"
        quantize_onnx(fp32.path, int8, "static", calibration)
        return {
            "onnx_fp32": Path(fp32.path).stat().st_size,
            "onnx_int8_static": int8.stat().st_size,
        }


def main() -> None:
    out = Path(__file__).parent / "results"
    configure_logging()
    sizes = file_sizes()
    report = run_benchmark(
        model="resnet18",
        image_size=224,
        num_classes=1000,
        variants=VARIANTS,
        device="cpu",
        batch_sizes=[1],
        config=MeasureConfig(warmup=5, min_time=1.0, max_time=20.0 * len(VARIANTS)),
    )
    p50 = {row.variant: row.latency_ms["p50"] for row in report.results}
    spread = {row.variant: row.stability for row in report.results}
    eager = p50["eager-fp32"]
    speedups = {name: eager / value for name, value in p50.items()}
    size_ratio = sizes["onnx_int8_static"] / sizes["onnx_fp32"]
    features = cpu_features()
    result = {
        "command": "python benchmarks/quantization.py",
        "cpu": features.to_dict(),
        "int8_types": int8_types(features),
        "p50_ms": p50,
        "speedup_vs_eager_fp32": speedups,
        "size_bytes": sizes,
        "int8_static_size_ratio": size_ratio,
        "goals": {
            "onnx_int8_static_speedup_at_least_3x": speedups.get("onnx-int8-static", 0) >= 3,
            "onnx_int8_static_size_at_most_30_percent": size_ratio <= 0.30,
        },
        "skipped": [s.to_dict() for s in report.skipped],
        "bench": report.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantization.json").write_text(json.dumps(result, indent=2) + "\n")
    flags = [k for k in ("avx2", "avx512", "vnni", "amx") if getattr(features, k)]
    lines = [
        "# Quantization: ResNet-18, 224×224, batch 1, CPU",
        "",
        f"`{result['command']}` on {features.model} ({', '.join(flags) or 'no AVX2'}; "
        f"{report.environment['cpu']['torch_threads']} torch threads). int8 types: "
        f"{result['int8_types']['activation']} activations × {result['int8_types']['weight']} "
        f"weights, reduce_range={result['int8_types']['reduce_range']} "
        f"({result['int8_types']['why']}).",
        "",
        "| variant | p50 ms | speed-up vs eager fp32 | window spread |",
        "| --- | --- | --- | --- |",
    ]
    for name in sorted(p50, key=p50.get):
        stability = spread[name]
        note = "" if stability["stable"] else " (did not settle within 5%)"
        row = f"| {name} | {p50[name]:.2f} | {speedups[name]:.2f}x |"
        lines.append(f"{row} {stability['spread']:.1%}{note} |")
    lines += [
        "",
        f"Files: fp32 ONNX {sizes['onnx_fp32'] / 1e6:.1f} MB, static int8 ONNX "
        f"{sizes['onnx_int8_static'] / 1e6:.1f} MB ({size_ratio:.0%}).",
        "",
        f"Goals: static int8 ≥ 3x eager fp32 — {speedups.get('onnx-int8-static', 0):.2f}x; "
        f"int8 file ≤ 30% of fp32 — {size_ratio:.0%}.",
    ]
    lines += [f"\nSkipped: {s.text()}" for s in report.skipped]
    (out / "quantization.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
