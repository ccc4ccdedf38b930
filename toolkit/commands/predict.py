"""`dlkit predict`."""

from __future__ import annotations

import click

from toolkit.commands.output import print_json


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes to show per image.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True
)
@click.option(
    "--grid",
    type=click.Path(dir_okay=False),
    help="Save a PNG of the images with their predictions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def predict(model_path, images, top_k, device, grid, as_json) -> None:
    """Classify IMAGE files with MODEL: class names and probabilities."""
    from toolkit.errors import DlkitError
    from toolkit.evaluate import load_images
    from toolkit.evaluate import top_k as rank_classes
    from toolkit.runtime import open_runner

    if top_k < 1:
        raise DlkitError("--top-k must be at least 1")
    runner = open_runner(model_path, device=device)
    batch = load_images(images, runner)
    ranked = rank_classes(runner(batch), runner.info.classes, top_k)
    results = [{"image": str(p), "top_k": r} for p, r in zip(images, ranked, strict=True)]
    if grid:
        _save_grid(images, ranked, runner.info.preprocessing.channels, grid)
    if as_json:
        print_json({"model": str(model_path), "predictions": results, "grid": grid})
        return
    for result in results:
        best = ", ".join(f"{c['label']} {c['probability']:.3f}" for c in result["top_k"])
        click.echo(f"{result['image']}: {best}")
    if grid:
        click.echo(f"grid: {grid}")


def _save_grid(paths, ranked, channels: int, out: str) -> None:
    import numpy as np

    from toolkit.data import load_image
    from toolkit.plots import plot_predictions

    pictures = [np.asarray(load_image(p, channels)) for p in paths]
    titles = [f"{r[0]['label']} ({r[0]['probability']:.2f})" for r in ranked]
    plot_predictions(pictures, titles, out)
