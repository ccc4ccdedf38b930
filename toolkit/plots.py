"""PNG figures: training curves, prediction grids, accuracy against latency, benchmarks
(matplotlib, headless). Each `plot_*` saves the figure its `*_figure` builds."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from toolkit.files import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[dict[str, float]], path: str | os.PathLike) -> None:
    """Loss, accuracy (train and validation) and learning rate against epoch."""
    save_figure(history_figure(history), path)


def history_figure(history: Sequence[dict[str, float]]):
    """The figure `plot_history` saves."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))

    def curve(ax, key: str, label: str, **style) -> None:
        if all(key in h for h in history):  # runs from before a metric was recorded lack it
            ax.plot(epochs, [h[key] for h in history], marker="o", label=label, **style)

    curve(ax_loss, "train_loss", "train")
    curve(ax_loss, "val_loss", "validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    curve(ax_acc, "train_accuracy", "train")
    curve(ax_acc, "val_accuracy", "validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    curve(ax_lr, "lr", "learning rate", color="tab:purple")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (at the epoch's start)", title="Learning rate")
    if all(h.get("lr", 0) > 0 for h in history):
        ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # one epoch: a tick at 1, not 0.95
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.legend()
    fig.tight_layout()
    return fig


def plot_predictions(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    wrong: Sequence[bool | None] | None = None,
    title: str = "",
) -> None:
    """A grid of images (H×W or H×W×3 uint8) with a caption under each; `wrong[i]` colours a
    caption red (a wrong prediction), green (a right one) or leaves it black (None: unknown).
    `title` heads the figure (a summary such as "183/200 correct")."""
    save_figure(predictions_figure(images, titles, wrong, title), path)


def grid_shape(count: int) -> tuple[int, int]:
    """Columns and rows for `count` pictures: up to 6 in a row, more for a large set, so the
    grid stays about square instead of a strip many times taller than wide."""
    cols = min(count, max(6, math.ceil(math.sqrt(count))))
    return cols, -(-count // cols)


def predictions_figure(images, titles, wrong=None, title: str = ""):
    """The figure `plot_predictions` saves."""
    plt = pyplot()
    wrong = list(wrong) if wrong is not None else [None] * len(images)
    cols, rows = grid_shape(len(images))
    tile = 1.0 if len(images) <= 36 else 0.7  # large grids: smaller tiles, smaller captions
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * tile * cols, 2.9 * tile * rows), squeeze=False
    )
    for ax in axes.flat[len(images) :]:
        ax.axis("off")
    colours = {True: "tab:red", False: "tab:green", None: "black"}
    for ax, image, caption, bad in zip(axes.flat, images, titles, wrong, strict=False):
        if image.ndim == 2:  # grayscale as it is, not stretched to its own darkest and lightest
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        # The caption is the x label: always below the picture, whatever its aspect ratio.
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        ax.set_xlabel(caption, fontsize=8 if tile == 1 else 6, color=colours[bad])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_accuracy_latency(variants, selected: str | None, path: str | os.PathLike) -> None:
    """Accuracy against p50 latency, one point per benchmarked variant, the selected one
    marked (`variants` have name, accuracy and latency_ms)."""
    save_figure(accuracy_latency_figure(variants, selected), path)


def accuracy_latency_figure(variants, selected: str | None):
    """The figure `plot_accuracy_latency` saves."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = [v for v in variants if v.latency_ms is not None and v.accuracy is not None]
    for i, v in enumerate(plotted):
        chosen = v.name == selected
        ax.scatter(
            v.latency_ms["p50"],
            v.accuracy,
            s=160 if chosen else 60,
            marker="*" if chosen else "o",
            color="tab:red" if chosen else "tab:blue",
            zorder=3,
        )
        ax.annotate(
            v.name + (" (selected)" if chosen else ""),
            (v.latency_ms["p50"], v.accuracy),
            textcoords="offset points",
            xytext=(6, 6 - 14 * (i % 2)),  # alternate label heights so neighbours stay readable
            fontsize=8,
        )
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set(
        xlabel="p50 latency (ms, log scale)",
        ylabel="validation accuracy",
        title="Accuracy against latency",
    )
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plain_log_ticks(axis) -> None:
    """Label a log axis in plain numbers (0.3, 14, 200; not 3e-01 or 1.4×10^1): every decade,
    and as many ticks between as fit (all of them when the axis spans less than a decade)."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _) -> str:
        low, high = axis.get_view_interval()
        decades = math.log10(high / low) if low > 0 else 99
        lead = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        shown = range(1, 10) if decades < 1 else (2, 3, 5) if decades < 2 else (2, 5)
        return f"{value:g}" if decades < 3 and lead in shown else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def save_figure(fig, path: str | os.PathLike) -> None:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_bench(report, path: str | os.PathLike) -> None:
    """p50 latency and throughput of every variant (`report` is a BenchReport): against batch
    size (log scales) when there are several, as bars when there is one."""
    save_figure(bench_figure(report), path)


def series_styles(count: int) -> list[tuple[tuple[float, ...], str]]:
    """`count` (colour, marker) pairs, no colour twice: tab10's colours up to 10 series,
    tab20's up to 20, evenly spaced hues beyond; markers vary too, for print and for
    colour-blind readers."""
    plt = pyplot()
    if count <= 10:
        colours = [plt.get_cmap("tab10")(i) for i in range(count)]
    elif count <= 20:
        colours = [plt.get_cmap("tab20")(i) for i in range(count)]
    else:
        colours = [plt.get_cmap("hsv")(i / count) for i in range(count)]
    markers = "os^DvPX*<>ph"
    return [(colour, markers[i % len(markers)]) for i, colour in enumerate(colours)]


def bench_figure(report):
    """The figure `plot_bench` saves."""
    import textwrap

    plt = pyplot()
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    variants = list(dict.fromkeys(r.variant for r in report.results))
    sizes = report.settings["batch_sizes"]
    timing = "device time" if report.device == "cuda" else "end to end"
    if len(sizes) == 1:
        rows = [report.rows(variant=v)[0] for v in variants]
        positions = range(len(rows))
        ax_lat.barh(positions, [r.rank_value for r in rows], color="tab:blue")
        ax_thr.barh(positions, [r.best_throughput for r in rows], color="tab:green")
        for ax in (ax_lat, ax_thr):
            ax.set_yticks(list(positions), variants, fontsize=8)
            ax.invert_yaxis()
            ax.grid(alpha=0.3, axis="x")
        ax_lat.set(xlabel=f"p50 latency, ms ({timing})", title=f"Latency, batch {sizes[0]}")
        ax_thr.set(xlabel="samples / s", title=f"Throughput, batch {sizes[0]}")
    else:
        for name, (colour, marker) in zip(variants, series_styles(len(variants)), strict=True):
            rows = sorted(report.rows(variant=name), key=lambda r: r.batch_size)
            x = [r.batch_size for r in rows]
            style = {"color": colour, "marker": marker, "label": name}
            ax_lat.plot(x, [r.rank_value for r in rows], **style)
            ax_thr.plot(x, [r.best_throughput for r in rows], **style)
        ax_lat.set(xlabel="batch size", ylabel=f"p50 latency, ms ({timing})", title="Latency")
        ax_thr.set(xlabel="batch size", ylabel="samples / s", title="Throughput")
        for ax in (ax_lat, ax_thr):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
            plain_log_ticks(ax.yaxis)  # 600 and 0.3, not 6×10² or 3e-01
            ax.grid(alpha=0.3, which="both")
        # Beside the plots, not over their lines: a dozen series fill a corner.
        fig.legend(*ax_thr.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    env = report.environment
    where = env["gpu"]["name"] if env.get("gpu") else env["cpu"]["model"]
    model = report.settings["model"]
    model = model if isinstance(model, str) else ", ".join(model)
    # Wrapped, so a long model path or list of files never runs off the figure's edges.
    title = textwrap.fill(f"{model} on {where}", width=110)
    fig.suptitle(title, fontsize=10)
    return fig
