"""`dlkit eval`."""

from __future__ import annotations

import click

from toolkit.commands.output import json_option, print_json


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="ImageFolder to evaluate on (default: the model's own data).",
)
@click.option("--dataset", type=click.Choice(["digits"]), help="An embedded dataset.")
@click.option(
    "--split",
    type=click.Choice(["val", "train", "all"]),
    help="Default: val of the model's own data, all of another folder.",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True
)
@json_option
def evaluate(model_path, data, dataset, split, batch_size, device, as_json) -> None:
    """Accuracy, per-class accuracy and confusion matrix of MODEL on labelled images.

    Without --data or --dataset, MODEL is evaluated on the validation split it was trained with.
    """
    import dataclasses
    from pathlib import Path

    from toolkit.data import load_split
    from toolkit.errors import DlkitError
    from toolkit.evaluate import evaluate as run_evaluation
    from toolkit.runtime import open_runner

    runner = open_runner(model_path, device=device)
    source = runner.info.source
    if data or dataset:
        own = source.data and data and Path(source.data).resolve() == Path(data).resolve()
        own = own or (dataset is not None and dataset == source.dataset and not data)
        has_val = data is not None and (Path(data) / "val").is_dir()
        split = split or ("val" if own or has_val else "all")
        source = dataclasses.replace(source, data=data, dataset=None if data else dataset)
    split = split or "val"
    dataset_obj, classes = load_split(source, runner.info.preprocessing, split)
    if list(classes) != list(runner.info.classes):
        raise DlkitError(
            f"the data's classes {classes} differ from the model's {list(runner.info.classes)}"
        )
    report = run_evaluation(runner, dataset_obj, batch_size)
    report |= {"model": str(model_path), "data": source.describe(), "split": split}
    if as_json:
        print_json(report)
        return
    click.echo(
        f"accuracy {report['accuracy']:.4f} on {report['num_samples']} images "
        f"({split} split of {report['data']})"
    )
    width = max(len("class"), *(len(c) for c in classes))
    click.echo(f"\n{'class':<{width}}  accuracy  images")
    for name, row in report["per_class"].items():
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        click.echo(f"{name:<{width}}  {acc:>8}  {row['num_samples']:>6}")
    click.echo("\nconfusion matrix (rows: true, columns: predicted)")
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        click.echo(f"{name:<{width}} " + " ".join(f"{v:>4}" for v in row))
