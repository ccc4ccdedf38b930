"""The pictures: training history, prediction grid, accuracy against latency (read back from
the figures the PNGs are saved from)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from toolkit.plots import (
    accuracy_latency_figure,
    history_figure,
    plot_history,
    predictions_figure,
    pyplot,
)


def tick_labels(ax, axis: str = "x") -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.get_xticklabels(which="both") if axis == "x" else ax.get_yticklabels(which="both")
    return [t.get_text() for t in ticks if t.get_text()]


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "lr": 1e-3 / e,
            "train_loss": 2.0 / e,
            "val_loss": 2.1 / e,
            "train_accuracy": 0.5 + e / 20,
            "val_accuracy": 0.45 + e / 20,
        }
        for e in range(1, epochs + 1)
    ]


@pytest.mark.parametrize("epochs", [1, 2, 3, 7])
def test_history_has_whole_epochs_both_accuracies_and_the_learning_rate(epochs):
    fig = history_figure(history(epochs))
    _, ax_acc, ax_lr = fig.axes
    for ax in fig.axes:
        labels = tick_labels(ax)
        assert labels and all(label.lstrip("−-").isdigit() for label in labels), labels
    assert [line.get_label() for line in ax_acc.lines] == ["train", "validation"]
    assert list(ax_acc.lines[0].get_ydata()) == [h["train_accuracy"] for h in history(epochs)]
    assert list(ax_lr.lines[0].get_ydata()) == [h["lr"] for h in history(epochs)]
    assert ax_lr.get_title() == "Learning rate"
    pyplot().close(fig)


def test_history_of_an_older_run_without_train_accuracy(tmp_path):
    old = [{k: v for k, v in h.items() if k != "train_accuracy"} for h in history(2)]
    plot_history(old, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("latencies", [(11.0, 14.0, 17.0), (0.3, 0.45, 0.9), (0.2, 3.0, 60.0)])
def test_accuracy_latency_axis_shows_plain_numbers(latencies):
    variants = [
        SimpleNamespace(name=f"v{i}", accuracy=0.9 + i / 100, latency_ms={"p50": ms})
        for i, ms in enumerate(latencies)
    ]
    fig = accuracy_latency_figure(variants, "v1")
    labels = tick_labels(fig.axes[0])
    assert labels, "no latency ticks labelled"
    for label in labels:
        assert re.fullmatch(r"\d+(\.\d+)?", label), labels  # 14 or 0.3: no 1.4×10^1, no 3e-01
    pyplot().close(fig)


def test_prediction_grid_titles_and_colours():
    images = [np.zeros((8, 8), dtype=np.uint8)] * 3
    titles = ["a.png\n3 (0.90)", "b.png\n5 (0.60)\nwrong: true 3", "c.png\n1 (0.50)"]
    fig = predictions_figure(images, titles, [False, True, None])
    shown = [(ax.get_xlabel(), ax.xaxis.label.get_color()) for ax in fig.axes[:3]]
    assert [t for t, _ in shown] == titles
    assert [c for _, c in shown] == ["tab:green", "tab:red", "black"]
    pyplot().close(fig)


def test_grid_columns_grow_with_the_number_of_pictures():
    from toolkit.plots import grid_shape

    assert grid_shape(4) == (4, 1) and grid_shape(12) == (6, 2)
    cols, rows = grid_shape(200)
    assert cols * rows >= 200 and cols >= 14 and rows <= cols + 1


def test_a_grid_of_many_predictions_is_headed_by_its_score_and_not_a_strip():
    images = [np.zeros((8, 8), dtype=np.uint8)] * 200
    fig = predictions_figure(images, ["x"] * 200, [False] * 183 + [True] * 17, "183/200 correct")
    width, height = fig.get_size_inches()
    assert fig._suptitle.get_text() == "183/200 correct"
    assert 0.5 < height / width < 2  # 6 columns made it 1440x9860 pixels
    assert width * fig.dpi <= 4000 and height * fig.dpi <= 4000


def bench_report(variants: int, model: str):
    """A BenchReport of made-up rows: `variants` variants at batch 1, 8 and 32."""
    from toolkit.bench.environment import describe_environment
    from toolkit.bench.harness import Measurement
    from toolkit.bench.results import BenchReport, BenchRow

    def row(i: int, batch: int) -> BenchRow:
        p50 = (1 + i / 10) * batch
        latency = dict.fromkeys(("p50", "p90", "p95", "p99", "mean", "min"), p50) | {"std": 0.0}
        m = Measurement(latency, 30, 3, [p50] * 3, 0.0, True, 1.0)
        return BenchRow.from_measurement(f"variant-{i}", "cpu", batch, m, None)

    return BenchReport(
        environment=describe_environment("cpu"),
        settings={"model": model, "device": "cpu", "batch_sizes": [1, 8, 32]},
        results=[row(i, b) for b in (1, 8, 32) for i in range(variants)],
        skipped=[],
    )


def test_bench_figure_tells_twelve_series_apart_and_keeps_its_title_and_legend_inside():
    from toolkit.plots import bench_figure

    model = ["/a/rather/long/path/to/runs/of/an/experiment/with/a/long/name/best.pt"] * 3
    fig = bench_figure(bench_report(12, model))
    fig.canvas.draw()
    for ax in fig.axes:
        colours = [tuple(line.get_color()) for line in ax.lines]
        assert len(colours) == 12 and len(set(colours)) == 12
    inside = fig.bbox
    title = fig._suptitle.get_window_extent()
    assert inside.x0 <= title.x0 and title.x1 <= inside.x1 and title.y1 <= inside.y1
    [legend] = fig.legends
    box = legend.get_window_extent()
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0
    assert [t.get_text() for t in legend.get_texts()] == [f"variant-{i}" for i in range(12)]
    pyplot().close(fig)
