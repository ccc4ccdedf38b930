"""The deploy report: what was done, typed, and written as JSON, Markdown and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.choices import Objective
from toolkit.deploy.selection import TIE_TOLERANCE, VariantReport
from toolkit.files import write_json, write_text
from toolkit.plots import plot_accuracy_latency
from toolkit.tables import Column, fmt, render_markdown

UNSTABLE = "!"


@dataclass
class DeployReport:
    """Everything `dlkit deploy` did; `report.json` holds `to_dict()`."""

    config: dict[str, Any]
    run_dir: str
    checkpoint: str | None = None
    training: dict[str, Any] | None = None
    variants: list[VariantReport] = field(default_factory=list)
    selected: VariantReport | None = None
    speedup_vs_eager_fp32: float | None = None
    speedup_stable: bool = False  # both timings behind it settled
    unsettled: list[str] = field(default_factory=list)  # those that did not, in words
    packaged: list[dict[str, Any]] = field(default_factory=list)
    repository: str | None = None
    repository_changed: bool = False
    smoke_test: dict[str, Any] | None = None
    served: dict[str, Any] | None = None  # `dlkit tune` on the packaged model (deploy --tune)
    skipped_stages: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float | None = None
    failed_stage: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config, "run_dir": self.run_dir}
        if self.training is not None:
            out["training"] = self.training
        out |= {
            "checkpoint": self.checkpoint,
            "variants": [v.to_dict() for v in self.variants],
            "selected": self.selected.to_dict() if self.selected else None,
            "speedup_vs_eager_fp32": self.speedup_vs_eager_fp32,
            "speedup_stable": self.speedup_stable,
            "unsettled_figures": self.unsettled,
            "packaged": self.packaged,
            "repository": self.repository,
            "repository_changed": self.repository_changed,
            "smoke_test": self.smoke_test,
            "served": self.served,
            "skipped_stages": self.skipped_stages,
            "stage_seconds": self.stage_seconds,
            "total_seconds": self.total_seconds,
        }
        if self.failed_stage is not None:
            out |= {"failed_stage": self.failed_stage, "error": self.error}
        return out


def unsettled_figures(
    selected: VariantReport, baseline: VariantReport, objective: str, batch_sizes
) -> list[str]:
    """The figures a speed-up of `selected` over `baseline` is computed from (p50 latency at
    the smallest batch, or throughput at the largest, as the objective reads) whose
    measurement windows did not agree, each in words; empty when both settled."""
    latency = objective == Objective.LATENCY
    size, what = (min(batch_sizes), "p50 latency") if latency else (max(batch_sizes), "throughput")
    unsettled = []
    for variant in [baseline] + ([selected] if selected is not baseline else []):
        row = next((r for r in variant.benchmark if r["batch_size"] == size), None)
        if row is not None and not row["stability"]["stable"]:
            spread = row["stability"]["spread"]
            unsettled.append(
                f"{variant.name}'s {what} at batch {size} (its windows {spread:.0%} apart)"
            )
    return unsettled


def served_summary(tuned) -> dict[str, Any]:
    """What the deploy report shows of a `TuneReport`: the default and the tuned config's
    figures at each concurrency, what was chosen and written."""

    def figures(level) -> dict[str, float]:
        return {"throughput": level.throughput, "p50_ms": level.p50_ms, "p99_ms": level.p99_ms}

    levels = [
        {"concurrency": c, "default": figures(d), "tuned": figures(t)}
        for c in tuned.settings["concurrency"]
        if (d := tuned.baseline.level(c)) and (t := tuned.selected.level(c))
    ]
    return {
        "objective": tuned.settings["objective"],
        "chosen": tuned.selected.config.describe(tuned.baseline.config),
        "config": tuned.selected.config.serving.to_dict(),
        "levels": levels,
        "trials": len(tuned.trials),
        "stopped": tuned.stopped,
        "written": tuned.written,
        "accuracy": tuned.accuracy and tuned.accuracy["accuracy"],
        "round_trip_us": {k: b.round_trip_us for k, b in tuned.breakdowns.items()},
        "report": "tune/tune.md",
    }


def write_report(report: DeployReport) -> None:
    """report.json, report.md and accuracy_latency.png in the run folder."""
    run_dir = Path(report.run_dir)
    write_json(run_dir / "report.json", report.to_dict())
    if any(v.latency_ms for v in report.variants):
        selected = report.selected.name if report.selected else None
        plot_accuracy_latency(report.variants, selected, run_dir / "accuracy_latency.png")
    write_text(run_dir / "report.md", format_markdown(report))


def _marked(value: float | None, spec: str, stable: bool | None) -> str:
    return fmt(value, spec) + ("" if value is None or stable in (None, True) else UNSTABLE)


def variant_columns(selected: str | None) -> list[Column]:
    def size(v: VariantReport) -> str:
        weights = fmt(v.weights_bytes and v.weights_bytes / 1e6, ".2f")
        return f"{weights} ({fmt(v.size_bytes and v.size_bytes / 1e6, '.2f')})"

    return [
        Column("variant", lambda v: v.name + (" ✅" if v.name == selected else ""), "<"),
        Column("format", lambda v: v.format, "<"),
        Column("precision", lambda v: v.precision, "<"),
        Column("accuracy", lambda v: fmt(v.accuracy, ".4f")),
        Column("drop (points)", lambda v: fmt(v.accuracy_drop_points, ".2f")),
        Column(
            "95% interval",
            lambda v: (
                "–"
                if v.drop_ci_points is None
                else f"{v.drop_ci_points[0]:.2f} to {v.drop_ci_points[1]:.2f}"
            ),
        ),
        Column("top-1 agreement", lambda v: fmt(v.top1_agreement, ".3f")),
        Column("p50 ms", lambda v: _marked((v.latency_ms or {}).get("p50"), ".3f", v.stable)),
        Column("p99 ms", lambda v: _marked((v.latency_ms or {}).get("p99"), ".3f", v.stable)),
        Column("throughput /s", lambda v: _marked(v.throughput, ".0f", v.stable)),
        Column("weights MB (file)", size),
        Column("gate", lambda v: str(v.gate) + (" (reused)" if v.reused else ""), "<"),
    ]


def _headline(report: DeployReport) -> list[str]:
    selected = report.selected
    if selected is None:
        return []
    speedup = report.speedup_vs_eager_fp32
    if speedup is not None and report.speedup_stable:
        claim = f": {speedup:.2f}x eager fp32"
    elif speedup is not None:
        figures = " and ".join(report.unsettled) or "its timings"
        claim = f" (no speed-up is claimed: {figures} did not settle, marked {UNSTABLE})"
    else:
        claim = ""
    images = f" on {selected.samples} validation images" if selected.samples else ""
    return [
        f"Selected **{selected.name}** for {report.config['objective']}{claim}, accuracy "
        f"{selected.accuracy:.4f}{images} (budget: at most "
        f"{report.config['max_accuracy_drop']:g} percentage points lost, where the validation "
        "set shows the loss is real).",
        "",
    ]


def _accuracy_basis(variants: list[VariantReport]) -> list[str]:
    """How many validation images the accuracy figures and their intervals rest on."""
    counts = sorted({v.samples for v in variants if v.samples})
    if not counts:
        return []
    images = " or ".join(str(c) for c in counts)
    return [
        f"Accuracy, drop and its 95% interval (Tango's score interval for paired answers) rest "
        f"on {images} validation images: one image is {100 / counts[0]:.2f} points."
    ]


def format_markdown(report: DeployReport) -> str:
    lines = ["# dlkit deploy report", ""]
    if (report.training or {}).get("learned") is False:
        lines += [
            "**Warning:** the trained model does no better than chance on its validation "
            "split; the variants below agree with it, so they pass their gates anyway.",
            "",
        ]
    if report.failed_stage:
        lines += [f"**Failed at stage `{report.failed_stage}`:** {report.error}", ""]
    lines += _headline(report)
    if report.variants:
        selected = report.selected.name if report.selected else None
        lines += render_markdown(variant_columns(selected), report.variants)
        batch_sizes = report.config["batch_sizes"]
        lines += ["", *_accuracy_basis(report.variants)]
        lines += [
            f"Latency at batch {min(batch_sizes)}, throughput at batch {max(batch_sizes)}; "
            f"every variant ran with {report.config.get('threads')} intra-op thread(s), their "
            f"measurement windows interleaved. `{UNSTABLE}` marks figures whose windows did "
            f"not agree. Variants within {TIE_TOLERANCE:.0%} of the best count as tied; the "
            "simpler wins. Sizes: the model's weights, and the file in brackets.",
        ]
        notes = [f"- {v.name}: {v.note}" for v in report.variants if v.note]
        if notes:
            lines += ["", "Notes:", *notes]
        lines += ["", "![accuracy against latency](accuracy_latency.png)"]
    if (Path(report.run_dir) / "train" / "history.png").exists():
        lines += ["", "## Training", "", "![training curves](train/history.png)"]
    if report.skipped_stages:
        lines += ["", "## Skipped", ""]
        lines += [f"- {stage}: {why}" for stage, why in report.skipped_stages.items()]
    if report.stage_seconds:
        lines += ["", "## Time by stage", ""]
        stages = list(report.stage_seconds.items())
        lines += render_markdown(
            [Column("stage", lambda s: s[0], "<"), Column("seconds", lambda s: f"{s[1]:.1f}")],
            stages,
        )
    if report.served:
        lines += _served_lines(report)
    if report.smoke_test:
        smoke = report.smoke_test
        lines += [
            "",
            f"Smoke test: {smoke['samples']} validation images through {smoke['endpoint']}: "
            f"max abs error {smoke['max_abs_err']:.2e}, "
            f"top-1 agreement {smoke['top1_agreement']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def _served_lines(report: DeployReport) -> list[str]:
    """Served figures (default against tuned config) beside the in-process ones."""
    served, selected = report.served, report.selected
    written = served["written"]
    where = (
        f"written as {written['model']} version {written['version']}"
        if written
        else "no config beat the default: nothing written"
    )
    columns = [
        Column("concurrency", lambda r: str(r["concurrency"])),
        Column("default img/s", lambda r: f"{r['default']['throughput']:.0f}"),
        Column("tuned img/s", lambda r: f"{r['tuned']['throughput']:.0f}"),
        Column("default p50 / p99 ms", lambda r: _p50_p99(r["default"])),
        Column("tuned p50 / p99 ms", lambda r: _p50_p99(r["tuned"])),
    ]
    batch_sizes = report.config["batch_sizes"]
    in_process = (
        f"In process, the same artifact without a server: p50 "
        f"{selected.latency_ms['p50']:.3f} ms at batch {min(batch_sizes)}, "
        f"{selected.throughput:.0f} images/s at batch {max(batch_sizes)}."
        if selected and selected.latency_ms
        else ""
    )
    return [
        "",
        "## Served on Triton (`dlkit tune`)",
        "",
        f"Chosen for {served['objective']}: {served['chosen']} ({served['trials']} trials, "
        f"search {served['stopped']}); "
        f"{where}. Requests of one image, gRPC on the loopback; details in "
        f"[{served['report']}]({served['report']}).",
        "",
        *render_markdown(columns, served["levels"]),
        "",
        in_process,
    ]


def _p50_p99(figures: dict[str, float]) -> str:
    return f"{figures['p50_ms']:.2f} / {figures['p99_ms']:.2f}"
