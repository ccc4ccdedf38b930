"""Served on this CPU: the same model through ONNX Runtime and through OpenVINO inside Triton's
python backend (the pip-installed server), side by side, in one run.

ResNet-18 (3x224x224, random weights: speed only) as dlkit makes it (the artifact store): its
fp32 and static int8 files for ONNX Runtime (`onnx-fp32`, `onnx-int8-static`) and the same files
converted for OpenVINO (`openvino-fp32`, `openvino-int8`), each packaged for the python backend
with the package defaults and served together by one tritonserver; requests of one 224x224
image at concurrency 1 and 4, the models' load windows interleaved (`dlkit tune`'s
`compare_configs`) so machine noise hits all alike. Goal (issue 19, on a CPU with AMX):
OpenVINO int8 at concurrency 1 at least 2x faster (p50) than ONNX Runtime int8.

    python benchmarks/served_runtimes.py [--window 2] [--levels 1,4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from cpu_runtimes import resnet18_source  # the script beside this one

from toolkit.bench.load import LoadWindows
from toolkit.cpu import cpu_info
from toolkit.deploy.stages import place
from toolkit.devices import usable_cores
from toolkit.log import configure_logging
from toolkit.triton.configs import ServingOptions
from toolkit.tune.session import MeasureSettings, compare_configs
from toolkit.tune.space import TrialConfig
from toolkit.variants.registry import get_variant
from toolkit.variants.verified import verified_artifact

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("onnx-fp32", "openvino-fp32", "onnx-int8-static", "openvino-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--levels", default="1,4")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_logging(1)
    levels = tuple(int(c) for c in args.levels.split(","))
    source = resnet18_source()
    with tempfile.TemporaryDirectory(prefix="served-runtimes-") as tmp:
        paths = [
            place(verified_artifact(get_variant(name), source), Path(tmp), name)
            for name in VARIANTS
        ]
        configs = [TrialConfig(name, ServingOptions()) for name in VARIANTS]
        windows = LoadWindows(window=args.window, windows=3, max_windows=8)
        trials = compare_configs(paths, configs, MeasureSettings(levels, windows))
    rows = {
        t.config.variant: {
            lv.concurrency: {
                "p50_ms": lv.p50_ms,
                "p99_ms": lv.p99_ms,
                "throughput": lv.throughput,
                "stable": lv.load.stable,
                "failures": lv.failures,
            }
            for lv in t.levels
        }
        for t in trials
    }
    model, flags = cpu_info()
    results = {
        "command": "python benchmarks/served_runtimes.py " + " ".join(sys.argv[1:]),
        "cpu": model,
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        "cores": usable_cores(),
        "python": platform.python_version(),
        "levels": levels,
        "served": rows,
        "openvino_int8_vs_onnxruntime_int8_p50": {
            c: rows["onnx-int8-static"][c]["p50_ms"] / rows["openvino-int8"][c]["p50_ms"]
            for c in levels
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "served_runtimes.json").write_text(json.dumps(results, indent=2))
    (args.out / "served_runtimes.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "# ResNet-18 served through Triton's python backend: ONNX Runtime vs OpenVINO",
        "",
        f"`{results['command']}`",
        "",
        f"CPU: {results['cpu']} ({', '.join(results['flags'])}), {results['cores']} usable "
        "cores, shared by the server, its stubs and the load generator. One run; the four "
        "models' load windows interleaved. `!` = windows did not settle.",
        "",
        "| model | clients | p50 ms | p99 ms | images/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, by_level in results["served"].items():
        for level, m in by_level.items():
            mark = "" if m["stable"] else " !"
            lines.append(
                f"| {name} | {level} | {m['p50_ms']:.2f}{mark} | {m['p99_ms']:.2f} | "
                f"{m['throughput']:.1f} |"
            )
    ratios = results["openvino_int8_vs_onnxruntime_int8_p50"]
    lines += [
        "",
        "OpenVINO int8 vs ONNX Runtime int8, p50 (>1: OpenVINO faster): "
        + ", ".join(f"{r:.2f}x at {c} client(s)" for c, r in ratios.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
