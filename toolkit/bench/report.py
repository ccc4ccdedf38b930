"""Benchmark reports: a terminal table, and JSON + Markdown + PNG files for `--report DIR`.

Both tables come from one list of columns, so the terminal and the Markdown always agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.bench.run import rank_key, skip_text
from toolkit.files import atomic_path

MIB = 1024**2

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _columns(report: dict[str, Any]) -> list[Column]:
    cuda = report["settings"]["device"] == "cuda"
    unstable = "!"  # a figure whose windows did not agree before the time cap

    def flag(row: dict[str, Any]) -> str:
        marks = "*" if row["fastest"] else ""
        return marks + ("" if row["stability"]["stable"] else unstable)

    def ms(key: str, field: str = "latency_ms") -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{r[field][key]:.3f}"

    columns: list[Column] = [
        ("", flag),
        ("variant", lambda r: r["variant"]),
        ("p50 ms", ms("p50")),
    ]
    if cuda:
        columns.append(("device p50 ms", lambda r: _device_p50(r)))
    columns += [
        ("p90 ms", ms("p90")),
        ("p95 ms", ms("p95")),
        ("p99 ms", ms("p99")),
        (
            "mean ± std ms",
            lambda r: f"{r['latency_ms']['mean']:.3f} ± {r['latency_ms']['std']:.3f}",
        ),
        ("min ms", ms("min")),
        ("samples/s", lambda r: f"{_throughput(r):,.1f}"),
        ("peak MiB", lambda r: _mib(r["peak_memory_bytes"])),
        ("spread", lambda r: f"{r['stability']['spread']:.1%}"),
        ("speed-up", lambda r: _speedup(r["speedup_vs_eager_fp32"])),
    ]
    return columns


def _device_p50(row: dict[str, Any]) -> str:
    return f"{row['device_latency_ms']['p50']:.3f}" if "device_latency_ms" in row else "n/a"


def _throughput(row: dict[str, Any]) -> float:
    return row.get("device_throughput", row["throughput"])


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.0f}"


def _speedup(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _groups(report: dict[str, Any]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Rows per batch size, fastest first."""
    sizes = sorted({r["batch_size"] for r in report["results"]})
    return [
        (size, sorted((r for r in report["results"] if r["batch_size"] == size), key=rank_key))
        for size in sizes
    ]


def _environment_lines(report: dict[str, Any]) -> list[str]:
    env, settings = report["environment"], report["settings"]
    cpu, versions = env["cpu"], env["versions"]
    isa = ", ".join(cpu["instruction_sets"]) or "none detected"
    missing = [n for n in ("AVX-512", "AVX-512 VNNI", "AMX") if n not in cpu["instruction_sets"]]
    lines = [
        f"model {_model_name(settings['model'])} on {settings['device']}; "
        f"batch sizes {', '.join(map(str, settings['batch_sizes']))}",
        f"CPU {cpu['model']} ({cpu['architecture']}): {isa}"
        + (f"; no {', '.join(missing)}" if missing else "")
        + f"; torch kernels {cpu['torch_kernels']}",
        f"cores: {cpu['usable_cores']} usable of {cpu['logical_cores']}; threads: torch "
        f"{cpu['torch_threads']}, ONNX Runtime {cpu['onnxruntime_threads']}",
    ]
    gpu = env.get("gpu")
    if gpu:
        lines.append(
            f"GPU {gpu['name']} ({gpu['memory_bytes'] / 1024**3:.0f} GiB, "
            f"compute capability {gpu['compute_capability']}), "
            f"driver {gpu['driver'] or 'unknown'}, CUDA {gpu['cuda']}, cuDNN {gpu['cudnn']}"
        )
    lines.append(
        f"python {versions['python']}, torch {versions['torch']}, onnxruntime "
        f"{versions['onnxruntime']}, numpy {versions['numpy']}, dlkit {versions['dlkit']}"
    )
    return lines


def _model_name(model: str | list[str]) -> str:
    return model if isinstance(model, str) else ", ".join(model)


def _notes(report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    window = (
        f"{settings['iters']} iterations"
        if settings["iters"]
        else f"≥{settings['min_window_iters']} iterations and ≥{settings['min_time']:g} s"
    )
    return [
        f"`*` = fastest at its batch size, ranked by {settings['ranked_by']}.",
        "speed-up = eager-fp32's time / the variant's time (same ranking measure).",
        f"{settings['warmup']} warm-up iterations, then windows of {window} until the medians "
        f"of the last {settings['windows']} windows agree within {settings['tolerance']:.0%}; "
        "the statistics are over those windows and spread is their relative range. "
        f"`!` = did not agree within {settings['max_time']:g} s of measurement (shown anyway).",
        f"peak memory: {report['environment']['peak_memory']}.",
        "samples/s = batch size / mean latency, one batch at a time.",
    ]


def _consistency_lines(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['variant']} at batch {c['batch_size']} measured twice: p50 {c['first_p50_ms']:.3f} "
        f"then {c['second_p50_ms']:.3f} ms, {c['difference']:.1%} apart; reported spread "
        f"{c['spread']:.1%}: {'agrees' if c['agrees'] else 'DOES NOT agree'}"
        for c in report.get("consistency", [])
    ]


def _harness_lines(report: dict[str, Any]) -> list[str]:
    check = report.get("harness_check")
    if not check:
        return []
    verdict = "within" if check["passed"] else "NOT within"
    return [
        f"harness vs torch.utils.benchmark.Timer on a {check['operation']}: p50 "
        f"{check['harness_p50_ms']:.4f} ms vs Timer median {check['timer_median_ms']:.4f} ms, "
        f"ratio {check['ratio']:.3f} ({verdict} 5%); the harness's own cost per iteration "
        f"{check['harness_overhead_ms'] * 1e3:.2f} µs"
    ]


def _goal_lines(report: dict[str, Any]) -> list[str]:
    def outcome(g: dict[str, Any]) -> str:
        if g["value"] is None:
            return f"not measured ({g['why']})"
        if g["passed"]:
            return f"{g['value']:.2f}x (target {g['target']:g}x), met"
        short = 1 - g["value"] / g["target"]
        return f"{g['value']:.2f}x (target {g['target']:g}x), NOT met: {short:.0%} short"

    return [f"goal: {g['goal']}: {outcome(g)}" for g in report.get("goals", [])]


def format_table(report: dict[str, Any]) -> str:
    """The report as aligned plain text for a terminal."""
    columns = _columns(report)
    lines = _environment_lines(report)
    for size, rows in _groups(report):
        cells = [[title for title, _ in columns]] + [[cell(r) for _, cell in columns] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        lines += ["", f"batch {size}"]
        for row in cells:
            text = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(text).rstrip())
    lines.append("")
    lines += _notes(report)
    lines += [f"skipped {skip_text(s)}" for s in report["skipped"]]
    lines += _consistency_lines(report) + _harness_lines(report) + _goal_lines(report)
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document: environment, one ranked table per batch size."""
    from toolkit.bench.variants import VARIANTS

    columns = _columns(report)
    out = ["# dlkit bench", ""]
    if report.get("command"):
        out += [f"`{report['command']}`", ""]
    out += [f"- {line}" for line in _environment_lines(report)]
    for size, rows in _groups(report):
        out += ["", f"## Batch size {size}", ""]
        out.append("| " + " | ".join(title for title, _ in columns) + " |")
        out.append("|" + "|".join(" --- " for _ in columns) + "|")
        out += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    out += ["", "## Notes", ""] + [f"- {note}" for note in _notes(report)]
    described = {r["variant"].split(":")[-1] for r in report["results"]} & set(VARIANTS)
    out += [f"- `{name}`: {VARIANTS[name].description}" for name in VARIANTS if name in described]
    if report["skipped"]:
        out += ["", "## Skipped", ""] + [f"- {skip_text(s)}" for s in report["skipped"]]
    if report.get("consistency"):
        out += ["", "## Repeat measurement", ""]
        out += [f"- {line}" for line in _consistency_lines(report)]
    if report.get("harness_check"):
        out += ["", "## Harness against torch.utils.benchmark.Timer", ""]
        out += [f"- {line}" for line in _harness_lines(report)]
    if report.get("goals"):
        out += ["", "## Goals", ""] + [f"- {line}" for line in _goal_lines(report)]
    return "\n".join(out) + "\n"


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """p50 latency and throughput against batch size, one line per variant (log scales)."""
    from matplotlib.ticker import LogFormatter

    from toolkit.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.5))
    variants = list(dict.fromkeys(r["variant"] for r in report["results"]))
    for name in variants:
        rows = sorted(
            (r for r in report["results"] if r["variant"] == name), key=lambda r: r["batch_size"]
        )
        sizes = [r["batch_size"] for r in rows]
        ax_lat.plot(sizes, [rank_key(r) for r in rows], marker="o", label=name)
        ax_thr.plot(sizes, [_throughput(r) for r in rows], marker="o", label=name)
    timing = "device time" if report["settings"]["device"] == "cuda" else "end to end"
    ax_lat.set(xlabel="batch size", ylabel=f"p50 latency, ms ({timing})", title="Latency")
    ax_thr.set(xlabel="batch size", ylabel="samples / s", title="Throughput")
    sizes = report["settings"]["batch_sizes"]
    for ax in (ax_lat, ax_thr):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.yaxis.set_major_formatter(LogFormatter())  # 600, not 6×10²
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.grid(alpha=0.3, which="both")
    ax_thr.legend(fontsize=8)
    env = report["environment"]
    where = env["gpu"]["name"] if env.get("gpu") else env["cpu"]["model"]
    fig.suptitle(f"{_model_name(report['settings']['model'])} on {where}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike, stem: str = "bench"
) -> list[Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    texts = (json.dumps(report, indent=2) + "\n", format_markdown(report))
    for path, text in zip(paths[:2], texts, strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    plot_report(report, paths[2])
    return paths
