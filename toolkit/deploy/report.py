"""The deploy report: JSON, Markdown and an accuracy-against-latency plot in the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.deploy.selection import TIE_TOLERANCE, VariantReport
from toolkit.files import atomic_path


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and accuracy_latency.png in the run folder."""
    with atomic_path(run_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    variants = [VariantReport(**v) for v in report.get("variants", [])]
    if variants and any(v.latency_ms for v in variants):
        from toolkit.plots import plot_accuracy_latency

        selected = report.get("selected", {}).get("name")
        plot_accuracy_latency(variants, selected, run_dir / "accuracy_latency.png")
    history = run_dir / "train" / "history.png"
    with atomic_path(run_dir / "report.md") as tmp:
        tmp.write_text(format_markdown(report, variants, history.exists()))


def format_markdown(report: dict[str, Any], variants: list[VariantReport], curves: bool) -> str:
    lines = ["# dlkit deploy report", ""]
    if "failed_stage" in report:
        lines += [f"**Failed at stage `{report['failed_stage']}`:** {report['error']}", ""]
    selected = report.get("selected")
    if selected:
        speedup = report.get("speedup_vs_eager_fp32")
        lines += [
            f"Selected **{selected['name']}** for {report['config']['objective']}"
            + (f": {speedup:.2f}x eager fp32" if speedup else "")
            + f", accuracy {selected['accuracy']:.4f} "
            f"(budget: at most {report['config']['max_accuracy_drop']:g} percentage points "
            "lost).",
            "",
        ]
    if variants:
        lines += [
            "| variant | format | precision | accuracy | drop (points) | top-1 agreement | "
            "p50 ms | p99 ms | throughput /s | size MB | gate |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for v in variants:
            mark = " ✅" if selected and v.name == selected["name"] else ""
            lat = v.latency_ms or {}
            lines.append(
                f"| {v.name}{mark} | {v.format} | {v.precision} | {_fmt(v.accuracy, '.4f')} | "
                f"{_fmt(v.accuracy_drop_points, '.2f')} | {_fmt(v.top1_agreement, '.3f')} | "
                f"{_fmt(lat.get('p50'), '.3f')} | {_fmt(lat.get('p99'), '.3f')} | "
                f"{_fmt(v.throughput, '.0f')} | {_fmt(v.size_bytes and v.size_bytes / 1e6, '.2f')}"
                f" | {v.gate}{' (reused)' if v.reused else ''} |"
            )
        batch_sizes = report["config"]["batch_sizes"]
        lines += [
            "",
            f"Latency at batch {min(batch_sizes)}, throughput at batch {max(batch_sizes)}. "
            f"Variants within {TIE_TOLERANCE:.0%} of the best count as tied; the simpler wins.",
            "",
            "![accuracy against latency](accuracy_latency.png)",
        ]
    if curves:
        lines += ["", "## Training", "", "![training curves](train/history.png)"]
    if report.get("stage_seconds"):
        lines += ["", "## Time by stage", "", "| stage | seconds |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in report["stage_seconds"].items()]
    if report.get("smoke_test"):
        smoke = report["smoke_test"]
        lines += [
            "",
            f"Smoke test: {smoke['samples']} validation images through {smoke['endpoint']}: "
            f"max abs error {smoke['max_abs_err']:.2e}, "
            f"top-1 agreement {smoke['top1_agreement']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)
