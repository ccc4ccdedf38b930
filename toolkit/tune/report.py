"""The tuning report: every trial, the default against the chosen config, where one request's
time goes; written as tune.json, tune.md and tune.png (throughput against p99 for every trial
with the Pareto front, and latency against concurrency for the default and the chosen)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.files import write_json, write_text
from toolkit.plots import pyplot, save_figure
from toolkit.tables import Column, fmt, render_markdown, render_text
from toolkit.tune.breakdown import Breakdown
from toolkit.tune.trials import Trial

UNSTABLE = "!"


@dataclass
class TuneReport:
    """Everything `dlkit tune` did; `to_dict()` is what `--json` prints and tune.json holds."""

    settings: dict[str, Any]
    strategy: str
    trials: list[Trial]
    baseline: Trial
    selected: Trial
    chosen_by_search: Trial
    stopped: str
    decision: str = ""  # why the selected config was kept, in words
    accuracy: dict[str, Any] | None = None
    breakdowns: dict[str, Breakdown] = field(default_factory=dict)
    written: dict[str, Any] | None = None
    server_restarts: int = 0
    seconds: float = 0.0

    @property
    def top(self) -> int:
        return max(self.settings["concurrency"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": [t.to_dict() for t in self.trials],
            "baseline": self.baseline.to_dict(),
            "selected": self.selected.to_dict(),
            "accuracy": self.accuracy,
            "strategy": self.strategy,
            "stopped": self.stopped,
            "search_best": self.chosen_by_search.index,
            "kept_after_confirmation": self.selected is self.chosen_by_search,
            "decision": self.decision,
            "breakdown": {k: b.to_dict() for k, b in self.breakdowns.items()},
            "written": self.written,
            "settings": self.settings,
            "server_restarts": self.server_restarts,
            "seconds": self.seconds,
        }


def pareto_front(trials: list[Trial], concurrency: int) -> list[Trial]:
    """Every trial no other dominates at `concurrency` (at least as much throughput and at
    most the p99, better in one), by throughput; trials with equal figures are all on it.
    Only trials that served the level without a failed request count, on either side: a
    config whose requests failed (answered fast, with errors) is no trade-off to choose and
    must not push a working one off the front."""
    points = [
        (t, level)
        for t in trials
        if t.ok
        and (level := t.level(concurrency)) is not None
        and level.failures == 0
        and level.load.requests > 0
    ]
    front = [
        t
        for t, a in points
        if not any(
            b.throughput >= a.throughput
            and b.p99_ms <= a.p99_ms
            and (b.throughput > a.throughput or b.p99_ms < a.p99_ms)
            for _, b in points
        )
    ]
    return sorted(front, key=lambda t: t.level(concurrency).throughput)


def _cell(trial: Trial, concurrency: int, what: str) -> str:
    level = trial.level(concurrency)
    if level is None:
        return "–"
    value = {"t": level.throughput, "p50": level.p50_ms, "p99": level.p99_ms}[what]
    spec = ".0f" if what == "t" else ".2f"
    return fmt(value, spec) + ("" if level.load.stable is not False else UNSTABLE)


def trial_columns(report: TuneReport) -> list[Column]:
    levels = report.settings["concurrency"]
    marks = {report.baseline.index: " (default)", report.selected.index: " ✅"}
    columns = [
        Column("#", lambda t: str(t.index) + marks.get(t.index, ""), "<"),
        Column("round", lambda t: f"{t.round} {t.axis}", "<"),
        Column("config", lambda t: t.config.describe(report.baseline.config), "<"),
    ]
    for c in levels:
        columns.append(Column(f"img/s @{c}", lambda t, c=c: _cell(t, c, "t")))
    columns += [
        Column(f"p50 ms @{min(levels)}", lambda t: _cell(t, min(levels), "p50")),
        Column(f"p99 ms @{report.top}", lambda t: _cell(t, report.top, "p99")),
        Column("status", lambda t: str(t.status) + (f": {t.error}" if t.error else ""), "<"),
    ]
    return columns


def comparison_lines(report: TuneReport, markdown: bool = True) -> list[str]:
    """Default against chosen, level by level."""
    rows = [
        (c, report.baseline.level(c), report.selected.level(c))
        for c in report.settings["concurrency"]
    ]
    rows = [r for r in rows if r[1] and r[2]]
    columns = [
        Column("concurrency", lambda r: str(r[0])),
        Column("default img/s", lambda r: f"{r[1].throughput:.0f}"),
        Column("chosen img/s", lambda r: f"{r[2].throughput:.0f}"),
        Column("ratio", lambda r: f"{r[2].throughput / r[1].throughput:.2f}x"),
        Column("default p50/p99 ms", lambda r: f"{r[1].p50_ms:.2f} / {r[1].p99_ms:.2f}"),
        Column("chosen p50/p99 ms", lambda r: f"{r[2].p50_ms:.2f} / {r[2].p99_ms:.2f}"),
        Column("client / server cores", lambda r: _cores(r[2])),
    ]
    return (render_markdown if markdown else render_text)(columns, rows)


def _cores(level) -> str:
    client, server = level.load.client_cpu, level.load.server_cpu
    return f"{fmt(client, '.2f')} / {fmt(server, '.2f')}"


def breakdown_lines(report: TuneReport, markdown: bool = True) -> list[str]:
    """One request at concurrency 1: each part in µs, for the default and the chosen."""
    names = list(report.breakdowns)
    parts = [p for p, _ in next(iter(report.breakdowns.values())).parts()]
    values = {n: dict(b.parts()) for n, b in report.breakdowns.items()}
    rows = [*parts, "round trip"]
    for name, b in report.breakdowns.items():
        values[name]["round trip"] = b.round_trip_us
    columns = [Column("part of one request (µs)", lambda p: p, "<")]
    columns += [Column(n, lambda p, n=n: f"{values[n][p]:.0f}") for n in names]
    return (render_markdown if markdown else render_text)(columns, rows)


def format_markdown(report: TuneReport) -> str:
    s, sel = report.settings, report.selected
    chosen = sel.config.describe(report.baseline.config)
    lines = [
        "# dlkit tune report",
        "",
        f"Chosen: **{chosen}** (trial {sel.index}) for the {s['objective']} "
        f"objective; search stopped: {report.stopped}; {len(report.trials)} trials, "
        f"{report.seconds:.0f} s in all, {s['cores']} cores.",
        "",
        f"Decision: {report.decision}.",
        "",
        "## Default against chosen",
        "",
        *comparison_lines(report),
        "",
        "Client / server cores: CPU the load generator's process and the server's processes "
        "(tritonserver and its python stubs) used over the level, in cores.",
        "",
        "## Where one request's time goes (concurrency 1)",
        "",
        *breakdown_lines(report),
        "",
        "![trials and latency](tune.png)",
        "",
        "## Trials",
        "",
        *render_markdown(trial_columns(report), report.trials),
        "",
        f"`{UNSTABLE}` marks a level whose windows did not agree within the tolerance.",
        "",
        "## Strategy",
        "",
        report.strategy,
    ]
    if report.accuracy:
        a = report.accuracy
        lines += ["", "## Accuracy through the endpoint", ""]
        lines += [
            f"{a['samples']} validation images through the chosen config: accuracy "
            f"{a['accuracy']:.4f}, {a['accuracy_drop_points']:.2f} points against "
            f"{a['baseline']}, top-1 agreement with the local runner "
            f"{a['top1_agreement_with_local']:.3f} ({a['parity']}), gate {a['gate']}."
        ]
    if report.written:
        w = report.written
        lines += ["", f"Written: model {w['model']} version {w['version']} ({w['path']})."]
        if w.get("config_changes"):
            lines += [f"Config changed for every version: {w['config_changes']}."]
        if w.get("instead_of"):
            lines += [f"Not as {w['instead_of']}: {w['reason']}"]
    return "\n".join(lines) + "\n"


def plot_tuning(report: TuneReport, path: str | os.PathLike) -> None:
    """Throughput against p99 at the top level for every trial, and p50/p99 against
    concurrency for the default and the chosen."""
    plt = pyplot()
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    shown = (
        (report.baseline, "s", "tab:gray", "default"),
        (report.selected, "*", "tab:red", "chosen"),
    )
    _plot_trials(ax_t, report, shown, plt.get_cmap("viridis"))
    for trial, _, colour, label in shown:
        x = [lv.concurrency for lv in trial.levels]
        p50, p99 = [lv.p50_ms for lv in trial.levels], [lv.p99_ms for lv in trial.levels]
        ax_l.plot(x, p50, marker="o", color=colour, label=f"{label} p50")
        ax_l.plot(x, p99, marker="^", linestyle="--", color=colour, label=f"{label} p99")
    ax_l.set_xscale("log", base=2)
    levels = report.settings["concurrency"]
    ax_l.set_xticks(levels, [str(c) for c in levels])
    ax_l.set(xlabel="concurrency", ylabel="latency (ms)", title="Latency against concurrency")
    for ax in (ax_t, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_trials(ax, report: TuneReport, shown, colours) -> None:
    """Every measured trial at the top level, coloured by round (only trials of one round
    were measured side by side), the Pareto front ringed and joined, default and chosen."""
    top, rounds = report.top, max(t.round for t in report.trials) or 1
    for trial in report.trials:
        if trial.ok and (level := trial.level(top)):
            colour = colours(trial.round / rounds)
            ax.scatter(level.p99_ms, level.throughput, color=colour, s=25, zorder=3)
            ax.annotate(str(trial.index), (level.p99_ms, level.throughput), fontsize=7)
    front = [t.level(top) for t in pareto_front(report.trials, top)]
    ax.plot(
        [lv.p99_ms for lv in front],
        [lv.throughput for lv in front],
        color="tab:orange",
        marker="o",
        markersize=11,
        fillstyle="none",
        label="Pareto front",
        zorder=2,
    )
    for trial, marker, colour, label in shown:
        if level := trial.level(top):
            ax.scatter(
                level.p99_ms,
                level.throughput,
                marker=marker,
                color=colour,
                s=150,
                label=f"{label} (trial {trial.index})",
                zorder=4,
            )
    ax.set(
        xlabel=f"p99 latency at concurrency {top} (ms)",
        ylabel="images / s",
        title=f"Every trial at concurrency {top} (colour: round)",
    )


def write_report(report: TuneReport, folder: str | os.PathLike) -> None:
    """tune.json, tune.md and tune.png in `folder`."""
    folder = Path(folder)
    write_json(folder / "tune.json", report.to_dict())
    plot_tuning(report, folder / "tune.png")
    write_text(folder / "tune.md", format_markdown(report))
