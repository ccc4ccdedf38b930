"""`dlkit predict`."""

from __future__ import annotations

import click

from toolkit.choices import Device, Protocol
from toolkit.commands.output import (
    DAY_SECONDS,
    choice,
    finite,
    json_option,
    model_timeout_option,
    print_json,
    trust_option,
)


@click.command()
@click.argument("paths", metavar="[MODEL] IMAGE...", nargs=-1, required=True)
@click.option(
    "--top-k", type=click.IntRange(1, 1000), default=3, show_default=True, help="Classes per image."
)
@click.option("--device", type=choice(Device), default="cpu", show_default=True)
@click.option(
    "--grid",
    type=click.Path(dir_okay=False),
    help="Save a PNG of the images with their predictions.",
)
@click.option(
    "--mistakes-only",
    is_flag=True,
    help="List and draw only the wrong answers (images in a folder named after a class).",
)
@click.option(
    "--url",
    "urls",
    multiple=True,
    help="A Triton server (HOST:PORT, grpc://... or http://...) instead of MODEL; several "
    "(repeat, or comma-separated) share the requests.",
)
@click.option("--model", "served_model", help="With --url: the served model's name.")
@click.option(
    "--protocol",
    type=choice(Protocol),
    help="With --url HOST:PORT: how to talk to it [default: grpc].",
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    callback=finite(0, DAY_SECONDS, above=True),
    help="With --url: seconds each request may take before the server counts as not answering.",
)
@click.option("--force", is_flag=True, help="Replace the --grid file if it exists.")
@trust_option
@model_timeout_option
@json_option
def predict(
    paths,
    top_k,
    device,
    grid,
    mistakes_only,
    urls,
    served_model,
    protocol,
    timeout,
    force,
    trust,
    as_json,
) -> None:
    """Classify images with MODEL: class names and probabilities.

    IMAGE may be a file, a folder (its images, recursively) or a glob such as 'photos/*.jpg'.
    With --url, no MODEL file: the images go to a model served by Triton (`dlkit serve`), which
    knows its own class names and preprocessing.
    """
    from toolkit.data import find_images
    from toolkit.errors import DlkitError
    from toolkit.files import output_path

    if grid and output_path(grid, "--grid").exists() and not force:
        raise DlkitError(f"--grid {grid} exists; pass --force to replace it")
    if urls:
        images = find_images(paths)
        ranked, channels, model_path, classes = _predict_served(
            list(urls), served_model, protocol, images, top_k, timeout
        )
    else:
        if served_model or protocol:
            raise DlkitError("--model and --protocol go with --url")
        if len(paths) < 2:
            raise DlkitError("give a MODEL file and at least one IMAGE (or --url for a server)")
        model_path, images = paths[0], find_images(paths[1:])
        ranked, channels, classes = _predict_local(model_path, images, top_k, device, trust)
    truths = true_labels(images, classes)
    score = correct_count(ranked, truths)
    shown = list(range(len(images)))
    if mistakes_only:
        if score is None:
            raise DlkitError(
                "--mistakes-only needs images in folders named after the model's classes "
                "(DIR/<class>/<image>), to know which answers are wrong"
            )
        shown = [i for i, t in enumerate(truths) if t is not None and ranked[i][0]["label"] != t]
    picked = [images[i] for i in shown], [ranked[i] for i in shown]
    if grid and shown:
        title = summary_line(score) + (f"; the {len(shown)} wrong" if mistakes_only else "")
        _save_grid(*picked, channels, grid, classes, title)
    results = [{"image": str(p), "top_k": r} for p, r in zip(*picked, strict=True)]
    if as_json:
        out = {"model": str(model_path), "predictions": results, "grid": grid if shown else None}
        if score is not None:
            out |= {"correct": score[0], "labelled": score[1]}
        print_json(out)
        return
    for result in results:
        best = ", ".join(f"{c['label']} {c['probability']:.3f}" for c in result["top_k"])
        click.echo(f"{result['image']}: {best}")
    if score is not None:
        click.echo(summary_line(score))
    if grid:
        click.echo(f"grid: {grid}" if shown else "grid: not written (no wrong answers to draw)")


def _predict_local(model_path, images, top_k: int, device: str, trust: bool):
    from toolkit.artifacts import read_info
    from toolkit.artifacts.contract import CHECK_IMAGES, check_classifier, check_scores
    from toolkit.artifacts.isolated import open_model
    from toolkit.data import preprocess_images
    from toolkit.evaluate import top_k as rank_classes

    info = read_info(model_path)
    batch = preprocess_images(images, info.preprocessing)
    # Its answers are what we print: is it a classifier, on these very images?
    check_classifier(model_path, info, None if info.static_batch else batch[:CHECK_IMAGES], trust)
    runner = open_model(model_path, device=device, trust=trust)
    logits = runner(batch)
    check_scores([logits], runner.info, len(images), str(model_path))
    pre = runner.info.preprocessing
    classes = runner.info.classes
    return rank_classes(logits, classes, top_k), pre.channels, classes


def _predict_served(urls: list[str], model, protocol, images, top_k: int, timeout: float):
    from toolkit.errors import DlkitError
    from toolkit.triton.client import TritonClient
    from toolkit.triton.endpoints import parse_urls

    named = next((e.model for e in parse_urls(urls, protocol) if e.model), None)
    model = model or named
    if not model:
        raise DlkitError("--url needs --model NAME (the served model to ask)")
    with TritonClient(urls, protocol=protocol, timeout=timeout) as client:
        ranked = client.classify(model, list(images), top_k)
        info = client.info(model)
    return ranked, info.preprocessing.channels, f"{client.url}/{model}", info.classes


def _save_grid(paths, ranked, channels: int, out: str, classes, title: str) -> None:
    import numpy as np

    from toolkit.data import load_image
    from toolkit.plots import plot_predictions

    pictures = [np.asarray(load_image(p, channels)) for p in paths]
    titles, wrong = grid_captions(paths, ranked, classes)
    plot_predictions(pictures, titles, out, wrong, title=title)


def true_labels(paths, classes) -> list[str | None]:
    """Each image's true class: the name of its folder when that is one of `classes`."""
    from pathlib import Path

    return [Path(p).parent.name if Path(p).parent.name in (classes or ()) else None for p in paths]


def correct_count(ranked, truths) -> tuple[int, int] | None:
    """(right answers, images with a known class), or None when no class is known."""
    known = [(top, t) for top, t in zip(ranked, truths, strict=True) if t is not None]
    if not known:
        return None
    return sum(top[0]["label"] == t for top, t in known), len(known)


def summary_line(score: tuple[int, int] | None) -> str:
    """`183/200 correct (91.5%)`, counting the images whose class their folder names."""
    if score is None:
        return ""
    right, known = score
    return f"{right}/{known} correct ({right / known:.1%}; true class from each image's folder)"


def grid_captions(paths, ranked, classes=None) -> tuple[list[str], list[bool | None]]:
    """Per image: its file name and top answer, and whether that answer is wrong. An image in
    a folder named after one of the model's `classes` has that true label (None: unknown)."""
    from pathlib import Path

    titles, wrong = [], []
    for path, top, truth in zip(paths, ranked, true_labels(paths, classes), strict=True):
        name = Path(path).name
        name = name if len(name) <= 24 else name[:11] + "…" + name[-12:]
        bad = top[0]["label"] != truth if truth is not None else None
        answer = f"{top[0]['label']} ({top[0]['probability']:.2f})"
        titles.append(f"{name}\n{answer}" + (f"\nwrong: true {truth}" if bad else ""))
        wrong.append(bad)
    return titles, wrong
