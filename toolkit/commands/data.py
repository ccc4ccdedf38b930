"""`dlkit data`: the embedded datasets."""

from __future__ import annotations

import click

from toolkit.commands.output import finite, json_option, print_json


@click.group()
def data() -> None:
    """Work with the embedded datasets."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--val-fraction",
    type=float,
    default=0.2,
    show_default=True,
    callback=finite(0, 1, above=True),
    help="Share of each class's images in val/.",
)
@json_option
def digits(out: str, val_fraction: float, as_json: bool) -> None:
    """Write the embedded digits as an ImageFolder of PNGs: OUT/{train,val}/<digit>/*.png.

    The split is the one `dlkit train --dataset digits` uses, so both train on the same images.
    """
    from toolkit.data import write_digits_folder
    from toolkit.files import output_path

    counts = write_digits_folder(output_path(out, "OUT"), val_fraction=val_fraction)
    if as_json:
        print_json({"path": out, **counts})
    else:
        click.echo(f"wrote {counts['train']} train and {counts['val']} val images to {out}")
