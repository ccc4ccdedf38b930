"""What commands share: one JSON object on stdout with `--json`, and the options several
commands take, declared once (their choices come from `toolkit.choices`)."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from toolkit.choices import Choice, Device


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))


def choice(choices: type[Choice], names: list[str] | None = None) -> click.Choice:
    """A click.Choice over a choice set (or some of its names)."""
    return click.Choice(names or choices.names())


def _quiet_when_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        from toolkit.log import configure_logging

        configure_logging(ctx.find_root().params.get("verbose", 0), quiet=True)
    return value


def finite(low: float | None = None, high: float | None = None, *, above: bool = False):
    """A click callback accepting only finite numbers in [low, high] (or (low, high] with
    `above`); None passes (an option not given)."""

    def check(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return value
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if above else value < low))
        bad = bad or (high is not None and value > high)
        if bad:
            lower = "" if low is None else f"{'above' if above else 'at least'} {low:g}"
            upper = "" if high is None else f"at most {high:g}"
            rule = " and ".join(r for r in (lower, upper) if r) or "finite"
            raise click.BadParameter(f"must be a finite number, {rule}; got {value}")
        return value

    return check


def int_list(high: int):
    """A click callback for a comma-separated list of integers from 1 to `high`, e.g. 1,8,32;
    None passes (an option not given)."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
        if value is None:
            return None
        try:
            sizes = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
        if not sizes or min(sizes) < 1 or max(sizes) > high:
            raise click.BadParameter(f"expected integers from 1 to {high}, e.g. 1,8,32")
        return sizes

    return check


# Bounds of what makes sense, shared by the options that take such values.
MAX_BATCH = 65536  # images in one batch
MAX_CONCURRENCY = 1024  # client threads of a load generator on one machine
DAY_SECONDS = 86_400.0  # any wait, timeout or measurement: a day is already absurd
positive_ints = int_list(MAX_BATCH)
concurrency_levels = int_list(MAX_CONCURRENCY)


# Options several commands share, declared once.
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_quiet_when_json,
    help="Print one JSON object on stdout (progress stays off stderr).",
)
max_accuracy_drop_option = click.option(
    "--max-accuracy-drop",
    type=float,
    default=1.0,
    show_default=True,
    metavar="POINTS",
    callback=finite(0, 100),
    help="Refuse a variant that loses more accuracy than this (percentage points), when the "
    "validation set shows the loss is real (a paired test).",
)
repo_option = click.option(
    "--repo",
    type=click.Path(file_okay=False),
    default="model_repository",
    show_default=True,
    help="The Triton model repository.",
)
target_device_option = click.option(
    "--device", type=choice(Device, Device.targets()), default="cpu", show_default=True
)
run_device_option = click.option("--device", type=choice(Device), default="cpu", show_default=True)
threads_option = click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    help="Intra-op threads for torch and ONNX Runtime alike (default: half the usable cores).",
)
repository_trust_option = click.option(
    "--trust",
    is_flag=True,
    help="Serve models that hold what `dlkit package` does not write (other model.py files, "
    "TorchScript outside the classifier allowlist, configs that load libraries, extra files). "
    "Triton runs them with your privileges: only for repositories whose author you trust.",
)
trust_option = click.option(
    "--trust",
    is_flag=True,
    help="Load TorchScript files whose code calls operators outside dlkit's classifier "
    "allowlist. A TorchScript file is a program: trust only files whose origin you trust.",
)


def _model_timeout_scope(ctx: click.Context, param: click.Parameter, value: float | None):
    """Sets the model timeout for the whole command (`toolkit.artifacts.isolated`)."""
    if value is not None:
        from toolkit.artifacts.isolated import timeout_scope

        ctx.with_resource(timeout_scope(value))
    return value


model_timeout_option = click.option(
    "--model-timeout",
    type=click.FloatRange(0, 86_400, min_open=True),
    expose_value=False,
    callback=_model_timeout_scope,
    help="Seconds one step of running a model file from outside may take (loading it, one "
    "batch, quantizing it): files run in a child process that is stopped after this "
    "[default: $DLKIT_MODEL_TIMEOUT, else 120].",
)
