"""`dlkit predict`."""

from __future__ import annotations

import click

from toolkit.commands.output import json_option, print_json


@click.command()
@click.argument(
    "paths", metavar="[MODEL] IMAGE...", nargs=-1, required=True, type=click.Path(dir_okay=False)
)
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes to show per image.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True
)
@click.option(
    "--grid",
    type=click.Path(dir_okay=False),
    help="Save a PNG of the images with their predictions.",
)
@click.option(
    "--url", help="A Triton server (HOST:PORT, grpc://... or http://...) instead of MODEL."
)
@click.option("--model", "served_model", help="With --url: the served model's name.")
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    help="With --url HOST:PORT: how to talk to it [default: grpc].",
)
@json_option
def predict(paths, top_k, device, grid, url, served_model, protocol, as_json) -> None:
    """Classify IMAGE files with MODEL: class names and probabilities.

    With --url, no MODEL file: the images go to a model served by Triton (`dlkit serve`), which
    knows its own class names and preprocessing.
    """
    from toolkit.errors import DlkitError

    if top_k < 1:
        raise DlkitError("--top-k must be at least 1")
    if url:
        ranked, channels, model_path, images = _predict_served(
            url, served_model, protocol, paths, top_k
        )
    else:
        if served_model or protocol:
            raise DlkitError("--model and --protocol go with --url")
        if len(paths) < 2:
            raise DlkitError("give a MODEL file and at least one IMAGE (or --url for a server)")
        model_path, images = paths[0], paths[1:]
        ranked, channels = _predict_local(model_path, images, top_k, device)
    results = [{"image": str(p), "top_k": r} for p, r in zip(images, ranked, strict=True)]
    if grid:
        _save_grid(images, ranked, channels, grid)
    if as_json:
        print_json({"model": str(model_path), "predictions": results, "grid": grid})
        return
    for result in results:
        best = ", ".join(f"{c['label']} {c['probability']:.3f}" for c in result["top_k"])
        click.echo(f"{result['image']}: {best}")
    if grid:
        click.echo(f"grid: {grid}")


def _predict_local(model_path, images, top_k: int, device: str):
    from toolkit.evaluate import load_images
    from toolkit.evaluate import top_k as rank_classes
    from toolkit.runtime import open_runner

    runner = open_runner(model_path, device=device)
    batch = load_images(images, runner)
    return rank_classes(
        runner(batch), runner.info.classes, top_k
    ), runner.info.preprocessing.channels


def _predict_served(url: str, model, protocol, images, top_k: int):
    from toolkit.errors import DlkitError
    from toolkit.triton.client import TritonClient, parse_url

    _, _, named = parse_url(url, protocol)
    model = model or named
    if not model:
        raise DlkitError("--url needs --model NAME (the served model to ask)")
    with TritonClient(url, protocol=protocol) as client:
        ranked = client.classify(model, list(images), top_k)
        channels = client.info(model).preprocessing.channels
    return ranked, channels, f"{client.url}/{model}", images


def _save_grid(paths, ranked, channels: int, out: str) -> None:
    import numpy as np

    from toolkit.data import load_image
    from toolkit.plots import plot_predictions

    pictures = [np.asarray(load_image(p, channels)) for p in paths]
    titles = [f"{r[0]['label']} ({r[0]['probability']:.2f})" for r in ranked]
    plot_predictions(pictures, titles, out)
