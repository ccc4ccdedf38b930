"""`dlkit eval`."""

from __future__ import annotations

import click

from toolkit.choices import Dataset, Device, Split
from toolkit.commands.output import (
    choice,
    json_option,
    model_timeout_option,
    print_json,
    trust_option,
)


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="ImageFolder to evaluate on (default: the model's own data).",
)
@click.option("--dataset", type=choice(Dataset), help="An embedded dataset.")
@click.option(
    "--split",
    type=choice(Split),
    help="Default: val of the model's own data, all of another folder.",
)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=64, show_default=True)
@click.option("--device", type=choice(Device), default="cpu", show_default=True)
@trust_option
@model_timeout_option
@json_option
def evaluate(model_path, data, dataset, split, batch_size, device, trust, as_json) -> None:
    """Accuracy, per-class accuracy and confusion matrix of MODEL on labelled images.

    Without --data or --dataset, MODEL is evaluated on the validation split it was trained with.
    """
    import dataclasses
    from pathlib import Path

    from toolkit.artifacts import read_info
    from toolkit.artifacts.contract import check_classifier, first_images
    from toolkit.artifacts.isolated import open_model
    from toolkit.data import load_split
    from toolkit.evaluate import evaluate as run_evaluation

    info = read_info(model_path)
    source = info.source
    if data or dataset:
        own = source.data and data and Path(source.data).resolve() == Path(data).resolve()
        own = own or (dataset is not None and dataset == source.dataset and not data)
        has_val = data is not None and (Path(data) / "val").is_dir()
        split = split or ("val" if own or has_val else "all")
        source = dataclasses.replace(source, data=data, dataset=None if data else dataset)
    split = split or "val"
    dataset_obj, classes = load_split(source, info.preprocessing, split)
    if len(dataset_obj):  # before any accuracy: is it a classifier, on these very images?
        check_classifier(model_path, info, first_images(dataset_obj, info, model_path), trust)
    runner = open_model(model_path, device=device, trust=trust)
    click.get_current_context().call_on_close(runner.close)  # a served model's connections
    report = run_evaluation(runner, dataset_obj, batch_size, data_classes=classes)
    report |= {
        "model": str(model_path),
        "data": source.describe(),
        "split": split,
        "data_classes": list(classes),
    }
    if as_json:
        print_json(report)
        return
    some = len(classes) < len(runner.info.classes)
    subset = f"; {len(classes)} of the model's {len(runner.info.classes)} classes" if some else ""
    click.echo(
        f"accuracy {report['accuracy']:.4f} on {report['num_samples']} images "
        f"({split} split of {report['data']}{subset})"
    )
    _print_tables(report)


def _print_tables(report: dict) -> None:
    from toolkit.tables import Column, fmt, render_text

    per_class = [(name, row) for name, row in report["per_class"].items()]
    click.echo("")
    click.echo("\n".join(render_text(
        [
            Column("class", lambda r: r[0], "<"),
            Column("accuracy", lambda r: fmt(r[1]["accuracy"], ".4f", "-")),
            Column("images", lambda r: str(r[1]["num_samples"])),
        ],
        per_class,
    )))  # fmt: skip
    click.echo("\nconfusion matrix (rows: true, columns: predicted)")
    classes = report["classes"]
    # Class names head the columns when they are short; long ones get numbers and a key.
    named = all(len(name) <= 10 for name in classes)
    matrix = list(zip(classes, report["confusion_matrix"], strict=True))
    columns = [Column("", lambda r: r[0], "<")] + [
        Column(name if named else str(i), lambda r, i=i: str(r[1][i]))
        for i, name in enumerate(classes)
    ]
    click.echo("\n".join(render_text(columns, matrix)))
    if not named:
        click.echo("columns: " + ", ".join(f"{i} {name}" for i, name in enumerate(classes)))
