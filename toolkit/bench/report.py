"""Benchmark reports: a terminal table, and JSON + Markdown + PNG files for `--report DIR`.

Both tables come from one list of columns (`toolkit.tables`), so the terminal and the
Markdown always agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.bench.results import BenchReport, BenchRow
from toolkit.files import atomic_path, write_json, write_text
from toolkit.plots import plot_bench
from toolkit.tables import Column, render_markdown, render_text
from toolkit.variants.registry import variants

MIB = 1024**2
UNSTABLE = "!"  # a figure whose windows did not agree before the time cap
FASTEST, TIED = "*", "="  # the fastest row; a row within the measured noise of it


def columns(report: BenchReport) -> list[Column]:
    def flag(row: BenchRow) -> str:
        mark = FASTEST if row.fastest else TIED if row.tied_with_fastest else ""
        return mark + ("" if row.stable else UNSTABLE)

    def ms(key: str) -> Column:
        return Column(f"{key} ms", lambda r: f"{r.latency_ms[key]:.3f}")

    out = [Column("", flag, "<"), Column("variant", lambda r: r.variant, "<"), ms("p50")]
    if report.device == "cuda":
        out.append(Column("device p50 ms", _device_p50))
    return [
        *out,
        ms("p90"),
        ms("p95"),
        ms("p99"),
        Column(
            "mean ± std ms", lambda r: f"{r.latency_ms['mean']:.3f} ± {r.latency_ms['std']:.3f}"
        ),
        ms("min"),
        Column("samples/s", lambda r: f"{r.best_throughput:,.1f}"),
        Column("peak MiB", lambda r: _mib(r.peak_memory_bytes)),
        Column("spread", lambda r: f"{r.stability['spread']:.1%}"),
        Column("speed-up", _speedup),
    ]


def _device_p50(row: BenchRow) -> str:
    return f"{row.device_latency_ms['p50']:.3f}" if row.device_latency_ms else "n/a"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.0f}"


def _speedup(row: BenchRow) -> str:
    if row.speedup_vs_eager_fp32 is None:
        return "n/a"
    tie = " (tie)" if row.speedup_within_noise else ""
    return f"{row.speedup_vs_eager_fp32:.2f}x" + ("" if row.speedup_stable else UNSTABLE) + tie


def _groups(report: BenchReport) -> list[tuple[int, list[BenchRow]]]:
    """Rows per batch size, fastest first."""
    sizes = sorted({r.batch_size for r in report.results})
    return [(s, sorted(report.rows(batch_size=s), key=lambda r: r.rank_value)) for s in sizes]


def _model_name(model: str | list[str]) -> str:
    return model if isinstance(model, str) else ", ".join(model)


def environment_lines(report: BenchReport) -> list[str]:
    env, settings = report.environment, report.settings
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


def notes(report: BenchReport) -> list[str]:
    s = report.settings
    window = (
        f"{s['iters']} iterations"
        if s["iters"]
        else f"≥{s['min_window_iters']} iterations and ≥{s['min_time']:g} s"
    )
    return [
        f"Rows are ranked, and `{FASTEST}` marks the fastest at its batch size, by one figure: "
        f"{s['ranked_by']}. `{TIED}` = within the measured noise of the fastest (their p50s "
        "differ by no more than the larger of their spreads): the order between them is not "
        "established.",
        "speed-up = eager-fp32's time / the variant's time (same ranking measure); "
        f"`{UNSTABLE}` after it: one of the two figures did not settle, so the ratio is "
        "not to be trusted; (tie): the two differ by no more than their noise.",
        f"{s['warmup']} warm-up iterations, then rounds of one window of {window} per "
        f"variant, taken in turn, until the medians of the last {s['windows']} windows of "
        f"every variant agree within {s['tolerance']:.0%}, so all are compared over the same "
        "rounds; the statistics are over those windows and spread is their relative range. "
        f"`{UNSTABLE}` = had not agreed when the {s['max_time']:g} s of measurement for the "
        "batch size (all variants together) were spent (shown anyway).",
        f"threads: {s['threads']} for torch and ONNX Runtime alike.",
        f"peak memory: {report.environment['peak_memory']}.",
        "samples/s = batch size / mean latency, one batch at a time (a long tail can order "
        "it differently from the p50 ranking).",
    ]


def consistency_lines(report: BenchReport) -> list[str]:
    return [
        f"{c['variant']} at batch {c['batch_size']} measured twice: p50 {c['first_p50_ms']:.3f} "
        f"then {c['second_p50_ms']:.3f} ms, {c['difference']:.1%} apart; reported spread "
        f"{c['spread']:.1%}: {'agrees' if c['agrees'] else 'DOES NOT agree'}"
        for c in report.consistency or []
    ]


def harness_lines(report: BenchReport) -> list[str]:
    check = report.extra.get("harness_check")
    if not check:
        return []
    verdict = "within" if check["passed"] else "NOT within"
    return [
        f"harness vs torch.utils.benchmark.Timer on a {check['operation']}: p50 "
        f"{check['harness_p50_ms']:.4f} ms vs Timer median {check['timer_median_ms']:.4f} ms, "
        f"ratio {check['ratio']:.3f} ({verdict} 5%); the harness's own cost per iteration "
        f"{check['harness_overhead_ms'] * 1e3:.2f} µs"
    ]


def goal_lines(report: BenchReport) -> list[str]:
    def outcome(g: dict[str, Any]) -> str:
        if g["value"] is None:
            return f"not measured ({g['why']})"
        if g["passed"]:
            return f"{g['value']:.2f}x (target {g['target']:g}x), met"
        short = 1 - g["value"] / g["target"]
        return f"{g['value']:.2f}x (target {g['target']:g}x), NOT met: {short:.0%} short"

    return [f"goal: {g['goal']}: {outcome(g)}" for g in report.goals or []]


def format_table(report: BenchReport) -> str:
    """The report as aligned plain text for a terminal."""
    cols = columns(report)
    lines = environment_lines(report)
    for size, rows in _groups(report):
        lines += ["", f"batch {size}", *render_text(cols, rows)]
    lines += ["", *notes(report)]
    lines += [f"skipped {s.text()}" for s in report.skipped]
    lines += consistency_lines(report) + harness_lines(report) + goal_lines(report)
    return "\n".join(lines)


def format_markdown(report: BenchReport) -> str:
    """The report as a Markdown document: environment, one ranked table per batch size."""
    cols = columns(report)
    out = ["# dlkit bench", ""]
    if report.command:
        out += [f"`{report.command}`", ""]
    out += [f"- {line}" for line in environment_lines(report)]
    for size, rows in _groups(report):
        out += ["", f"## Batch size {size}", "", *render_markdown(cols, rows)]
    out += ["", "## Notes", ""] + [f"- {note}" for note in notes(report)]
    known = variants()
    described = {r.variant_name for r in report.results} & set(known)
    out += [f"- `{name}`: {known[name].description}" for name in known if name in described]
    sections = [
        ("Skipped", [s.text() for s in report.skipped]),
        ("Repeat measurement", consistency_lines(report)),
        ("Harness against torch.utils.benchmark.Timer", harness_lines(report)),
        ("Goals", goal_lines(report)),
    ]
    for title, lines in sections:
        if lines:
            out += ["", f"## {title}", ""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def write_report(
    report: BenchReport, out_dir: str | os.PathLike, stem: str = "bench"
) -> list[Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `out_dir`, all or none (each is
    written to a temporary name first; a full disk leaves the folder as it was); returns
    their paths."""
    out = Path(out_dir)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    with atomic_path(paths[0]) as data, atomic_path(paths[1]) as text, atomic_path(paths[2]) as png:
        write_json(data, report.to_dict())
        write_text(text, format_markdown(report))
        plot_bench(report, png)
    return paths
