"""Printing results: one JSON object on stdout with `--json`, readable lines otherwise."""

from __future__ import annotations

import json
from typing import Any

import click


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))


# Options several commands share, declared once.
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
)
max_accuracy_drop_option = click.option(
    "--max-accuracy-drop",
    type=float,
    default=1.0,
    show_default=True,
    metavar="POINTS",
    help="Refuse a variant that loses more accuracy than this (percentage points).",
)
repo_option = click.option(
    "--repo",
    type=click.Path(file_okay=False),
    default="model_repository",
    show_default=True,
    help="The Triton model repository.",
)
