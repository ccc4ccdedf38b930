"""Printing results: one JSON object on stdout with `--json`, readable lines otherwise."""

from __future__ import annotations

import json
from typing import Any

import click


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))
