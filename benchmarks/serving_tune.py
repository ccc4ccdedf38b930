"""Served on this CPU: Triton's default config against the one `dlkit tune` chooses, in one run.

For the digits model (smallresnet, 1x32x32) and ResNet-18 (3x224x224), random weights (only
speed is measured), ONNX on the pip-installed tritonserver's python backend:

1. the ceiling: ONNX Runtime in process on the same artifact, on every usable core, at its
   best batch size (1, 8 or 32);
2. `dlkit tune` with the latency objective (concurrency 1 and 16), then with the throughput
   objective (1, 4 and 16), as dry runs (their reports are kept in results/serving_tune/);
3. the default, both winners and the old default (2,000 µs queue delay) side by side on a
   fresh server at concurrency 1, 4 and 16
   (windows interleaved, four to ten per config and level): the figures compared below; then
   the default and the throughput winner again with tensors in system shared memory (a client
   on the server's machine);

with, per level, the served throughput as a fraction of the ceiling and the cores the load
generator and the server's processes used, and where one request's time goes at
concurrency 1. Goals (digits): latency objective, tuned p50 at concurrency 1 at most 0.5x the
default's; throughput objective, tuned never below the default at any level and at least
1.3x it at concurrency 16.

    python benchmarks/serving_tune.py [--budget-minutes 4] [--models digits,resnet18]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from toolkit.artifacts import open_runner
from toolkit.artifacts.metadata import ArtifactInfo, DataSource, Preprocessing
from toolkit.bench.environment import usable_cores
from toolkit.bench.harness import MeasureConfig, measure_interleaved, wall_clock_step
from toolkit.bench.load import LoadWindows
from toolkit.log import configure_logging
from toolkit.training.models import create_model
from toolkit.triton.configs import ServingOptions
from toolkit.tune.run import TuneConfig, tune
from toolkit.tune.session import MeasureSettings, compare_configs
from toolkit.tune.space import TrialConfig
from toolkit.tune.trials import Trial
from toolkit.variants.export import export_model

FAILED_ROUNDS: list[dict] = []  # comparison rounds run again, and why
OLD_DEFAULT = "old default (2,000 µs queue delay)"  # the package default before this run
MODELS = {"digits": ("smallresnet", 1, 32, 10), "resnet18": ("resnet18", 3, 224, 10)}
RESULTS = Path(__file__).parent / "results"


def export(name: str, root: Path) -> Path:
    arch, channels, size, classes = MODELS[name]
    torch.manual_seed(0)
    model, spec = create_model(arch, classes, channels, size)
    info = ArtifactInfo(
        classes=tuple(str(i) for i in range(classes)),
        preprocessing=Preprocessing.default(channels, size),
        model=spec,
        source=DataSource(dataset=None, data=str(root / "none")),  # parity on random inputs
    )
    [onnx] = export_model(model, info, root / "export", name, formats=("onnx",))
    return Path(onnx.path)


def ceiling(onnx: Path, cores: int) -> dict:
    """In-process ONNX Runtime throughput at its best batch size (1, 8 or 32) and thread count
    (1 or every usable core), measured with their windows interleaved."""
    steps, sizes = {}, {}
    for threads in sorted({1, cores}):
        runner = open_runner(onnx, threads=threads)
        shape = runner.info.preprocessing.input_shape
        for batch_size in (1, 8, 32):
            batch = np.random.default_rng(0).standard_normal((batch_size, *shape), np.float32)
            key = f"{threads} threads, batch {batch_size}"
            steps[key], sizes[key] = wall_clock_step(runner, batch), batch_size
    config = MeasureConfig(warmup=2, min_time=1.0, max_time=8.0 * len(steps))  # shared budget
    measured = measure_interleaved(steps, config)
    rates = {k: sizes[k] / (m.latency_ms["p50"] / 1e3) for k, m in measured.items()}
    best = max(rates, key=rates.get)
    return {"throughput": rates, "best_setting": best, "best": rates[best]}


def tuned(onnx: Path, objective: str, levels: tuple[int, ...], args, report: Path) -> dict:
    config = TuneConfig(
        [str(onnx)], objective=objective, concurrency=levels, budget_minutes=args.budget_minutes,
        window_seconds=args.window, dry_run=True, report=str(report),
    )  # fmt: skip
    return tune(config).to_dict()


def compare(onnx: Path, configs: list[TrialConfig], shared_memory: bool, window: float):
    """`configs` side by side in one round on a fresh server, at concurrency 1, 4 and 16,
    windows interleaved (at least four per config and level, at most ten). A round in which a
    config fails is run once more (the failure is kept in the results); a second failure
    ends the benchmark with the reason."""
    windows = LoadWindows(window=window, windows=4, max_windows=10)
    settings = MeasureSettings((1, 4, 16), windows, shared_memory=shared_memory)
    for attempt in (1, 2):
        trials = compare_configs(onnx, configs, settings)
        failed = [f"{t.config.describe()}: {t.status} ({t.error})" for t in trials if not t.ok]
        if not failed:
            return trials
        FAILED_ROUNDS.append({"attempt": attempt, "failed": failed})
        print(f"comparison round failed (attempt {attempt}): {failed}", file=sys.stderr)
    raise SystemExit(f"the comparison failed twice: {failed}")


def config_of(result: dict) -> TrialConfig:
    selected = result["selected"]
    return TrialConfig(selected["variant"], ServingOptions(**_options(selected["config"])))


def _options(config: dict) -> dict:
    return config | {"preferred_batch_sizes": tuple(config["preferred_batch_sizes"])}


def level_rows(label: str, trial: Trial, best: float) -> list[dict]:
    return [
        {
            "config": label,
            "concurrency": lv.concurrency,
            "throughput": lv.throughput,
            "p50_ms": lv.p50_ms,
            "p99_ms": lv.p99_ms,
            "fraction_of_ceiling": lv.throughput / best,
            "client_cores": lv.load.client_cpu,
            "server_cores": lv.load.server_cpu,
            "stable": lv.load.stable,
            "failures": lv.failures,
        }
        for lv in trial.levels
    ]


def ratios(default: Trial, chosen: Trial) -> dict:
    return {
        lv.concurrency: {
            "throughput": chosen.level(lv.concurrency).throughput / lv.throughput,
            "p50": chosen.level(lv.concurrency).p50_ms / lv.p50_ms,
        }
        for lv in default.levels
    }


def run_model(name: str, root: Path, args) -> dict:
    cores = usable_cores()
    onnx = export(name, root)
    before = ceiling(onnx, cores)
    reports = RESULTS / "serving_tune"
    latency = tuned(onnx, "latency", (1, 16), args, reports / f"{name}-latency")
    throughput = tuned(onnx, "throughput", (1, 4, 16), args, reports / f"{name}-throughput")
    default = TrialConfig(throughput["baseline"]["variant"], ServingOptions(
        **_options(throughput["baseline"]["config"])))  # fmt: skip
    old = TrialConfig(
        default.variant, dataclasses.replace(default.serving, max_queue_delay_us=2000)
    )
    configs = [default, config_of(throughput), config_of(latency), old]
    labels = ("default", "tuned for throughput", "tuned for latency", OLD_DEFAULT)
    plain = compare(onnx, configs, False, args.window)
    shared = compare(onnx, configs[:2], True, args.window)
    # The machine is shared: the ceiling is measured before and after, the higher one kept.
    after = ceiling(onnx, cores)
    top = max(before, after, key=lambda c: c["best"]) | {
        "measured_before_and_after": [before["best"], after["best"]]
    }
    rows = [
        row
        for t, label in zip(plain, labels, strict=True)
        for row in level_rows(label, t, top["best"])
    ]
    for trial, label in zip(shared, labels, strict=False):
        rows += level_rows(f"{label} + shared memory", trial, top["best"])
    return {
        "model": name,
        "ceiling": top,
        "latency_run": _summary(latency),
        "throughput_run": _summary(throughput),
        "latency_ratios": ratios(plain[0], plain[2]),
        "throughput_ratios": ratios(plain[0], plain[1]),
        "latency_ratios_vs_old_default": ratios(plain[3], plain[2]),
        "throughput_ratios_vs_old_default": ratios(plain[3], plain[1]),
        "shared_memory_ratios": ratios(shared[0], shared[1]),
        "rows": rows,
    }


def _summary(result: dict) -> dict:
    keep = ("strategy", "stopped", "breakdown", "search_best", "kept_after_confirmation")
    return {k: result[k] for k in keep} | {
        "trials": len(result["trials"]),
        "seconds": result["seconds"],
        "default_config": result["baseline"]["config"],
        "chosen_config": result["selected"]["config"],
    }


def goals(digits: dict) -> dict:
    lat, thr = digits["latency_ratios"], digits["throughput_ratios"]
    old_lat, old_thr = (
        digits["latency_ratios_vs_old_default"],
        digits["throughput_ratios_vs_old_default"],
    )
    return {
        "against_old_default": {
            "latency_p50_at_1_ratio": old_lat[1]["p50"],
            "throughput_min_ratio_over_levels": min(r["throughput"] for r in old_thr.values()),
            "throughput_ratio_at_16": old_thr[16]["throughput"],
        },
        "latency_p50_at_1_ratio": lat[1]["p50"],
        "latency_p50_at_1_at_most_0.5x": lat[1]["p50"] <= 0.5,
        "throughput_min_ratio_over_levels": min(r["throughput"] for r in thr.values()),
        "throughput_never_below_default": min(r["throughput"] for r in thr.values()) >= 1.0,
        "throughput_ratio_at_16": thr[16]["throughput"],
        "throughput_at_16_at_least_1.3x": thr[16]["throughput"] >= 1.3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=1.0, help="Seconds per window.")
    parser.add_argument("--models", default="digits,resnet18")
    args = parser.parse_args()
    configure_logging()  # the tuning runs' progress on stderr
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlkit-serving-tune-") as tmp:
        results = [run_model(m, Path(tmp), args) for m in args.models.split(",")]
    by_model = {r["model"]: r for r in results}
    result = {
        "command": ("python benchmarks/serving_tune.py " + " ".join(sys.argv[1:])).strip(),
        "machine": f"{platform.machine()}, {usable_cores()} usable cores, Python "
        f"{platform.python_version()}",
        "seconds": round(time.perf_counter() - started),
        "models": results,
        "goals": goals(by_model["digits"]) if "digits" in by_model else None,
        "comparison_rounds_run_again": FAILED_ROUNDS,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_tune.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "serving_tune.md").write_text(markdown(result))
    print(json.dumps(result["goals"], indent=2))


def markdown(result: dict) -> str:
    lines = [
        "# Served on Triton: default config against `dlkit tune`'s choice",
        "",
        f"`{result['command']}` on {result['machine']}; {result['seconds']} s in all. ONNX on "
        "the pip-installed tritonserver's python backend, gRPC on 127.0.0.1, requests of one "
        "image; random weights.",
    ]
    for model in result["models"]:
        top = model["ceiling"]
        lines += [
            "",
            f"## {model['model']}",
            "",
            f"Ceiling: {top['best']:.0f} images/s in process (ONNX Runtime, "
            f"{top['best_setting']}; measured before and after: "
            f"{', '.join(f'{v:.0f}' for v in top['measured_before_and_after'])}).",
            "",
            "| config | concurrency | images/s | p50 ms | p99 ms | of ceiling | client cores "
            "| server cores | failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in model["rows"]:
            mark = "" if r["stable"] else "!"
            lines.append(
                f"| {r['config']} | {r['concurrency']} | {r['throughput']:.0f}{mark} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['fraction_of_ceiling']:.0%} | "
                f"{_cores(r['client_cores'])} | {_cores(r['server_cores'])} | {r['failures']} |"
            )
        lines += ["", "Tuned against default, same round:", ""]
        for key, label in (
            ("throughput_ratios", "tuned for throughput"),
            ("latency_ratios", "tuned for latency"),
            ("throughput_ratios_vs_old_default", f"tuned for throughput against the {OLD_DEFAULT}"),
            ("latency_ratios_vs_old_default", f"tuned for latency against the {OLD_DEFAULT}"),
            ("shared_memory_ratios", "tuned for throughput, both with shared memory"),
        ):
            cells = ", ".join(
                f"{r['throughput']:.2f}x images/s and {r['p50']:.2f}x p50 at {c}"
                for c, r in model[key].items()
            )
            lines.append(f"- {label}: {cells}")
        for run in ("latency_run", "throughput_run"):
            s = model[run]
            lines += [
                "",
                f"{run.replace('_', ' ')}: {s['trials']} trials in {s['seconds']:.0f} s, "
                f"search {s['stopped']}; chosen `{json.dumps(s['chosen_config'])}`.",
            ]
            lines += _breakdown_lines(s["breakdown"])
    for again in result["comparison_rounds_run_again"]:
        lines += ["", f"A comparison round was run again (attempt {again['attempt']} failed: "
                  f"{'; '.join(again['failed'])})."]  # fmt: skip
    if result["goals"]:
        g = result["goals"]
        lines += [
            "",
            "## Goals (digits)",
            "",
            f"- latency objective: tuned p50 at concurrency 1 = {g['latency_p50_at_1_ratio']:.2f}x "
            f"the default's (goal at most 0.5x): "
            f"{'met' if g['latency_p50_at_1_at_most_0.5x'] else 'missed'}",
            f"- throughput objective: lowest ratio over the levels "
            f"{g['throughput_min_ratio_over_levels']:.2f}x (goal: never below 1.0): "
            f"{'met' if g['throughput_never_below_default'] else 'missed'}; at concurrency 16 "
            f"{g['throughput_ratio_at_16']:.2f}x (goal at least 1.3x): "
            f"{'met' if g['throughput_at_16_at_least_1.3x'] else 'missed'}",
            "",
            f"Against the {OLD_DEFAULT}, the package default when the goals were set: tuned "
            f"for latency p50 at concurrency 1 "
            f"{g['against_old_default']['latency_p50_at_1_ratio']:.2f}x; tuned for throughput "
            f"lowest ratio over the levels "
            f"{g['against_old_default']['throughput_min_ratio_over_levels']:.2f}x, at "
            f"concurrency 16 {g['against_old_default']['throughput_ratio_at_16']:.2f}x.",
        ]
    return "\n".join(lines) + "\n"


def _cores(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _breakdown_lines(breakdown: dict) -> list[str]:
    names = list(breakdown)
    parts = list(breakdown[names[0]]["parts_us"])
    lines = ["", "| one request at concurrency 1 (µs) | " + " | ".join(names) + " |"]
    lines.append("| --- |" + " --- |" * len(names))
    for part in [*parts, "round trip"]:
        cells = [
            breakdown[n]["round_trip_us"]
            if part == "round trip"
            else breakdown[n]["parts_us"][part]
            for n in names
        ]
        lines.append(f"| {part} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return lines


if __name__ == "__main__":
    main()
