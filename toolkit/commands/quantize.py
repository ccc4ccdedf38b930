"""`dlkit quantize`."""

from __future__ import annotations

import click

from toolkit.choices import CalibrationMethod, Dataset, QuantizeMode
from toolkit.commands.output import (
    choice,
    json_option,
    max_accuracy_drop_option,
    model_timeout_option,
    print_json,
)


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--mode",
    type=choice(QuantizeMode),
    required=True,
    help="int8 dynamic/static (CPUs), or fp16 (GPUs).",
)
@click.option(
    "--calib-data",
    type=click.Path(),
    help="Calibration images (a folder) or preprocessed inputs (.npy). "
    "Default: the model's training split.",
)
@click.option("--dataset", type=choice(Dataset), help="Calibrate on an embedded dataset.")
@click.option(
    "--calib-samples",
    type=click.IntRange(1, 1_000_000),
    help="Calibration images (static) [default: 256, or all there are when fewer].",
)
@click.option(
    "--method",
    type=choice(CalibrationMethod),
    default="minmax",
    show_default=True,
    help="Calibration method (static).",
)
@click.option(
    "--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales (static)."
)
@max_accuracy_drop_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Output file (default: <artifact>.<mode>.onnx beside it).",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@model_timeout_option
@json_option
@click.pass_context
def quantize(
    ctx,
    artifact,
    mode,
    calib_data,
    dataset,
    calib_samples,
    method,
    per_channel,
    max_accuracy_drop,
    out,
    force,
    as_json,
):
    """Quantize an fp32 ONNX ARTIFACT and measure what it costs in accuracy.

    The quantized model and its source are both evaluated on the validation split (accuracy,
    the drop with its 95% interval, top-1 agreement, McNemar's test on the images where they
    disagree). A variant that loses more than --max-accuracy-drop points, significantly, is not
    kept and the command exits 1. For bf16 on checkpoints, benchmark the `eager-amp-cl` variant
    with `dlkit bench` instead: bf16 is an autocast option there, not a file transform.
    """
    from toolkit.variants.quantize import quantize_artifact

    result = quantize_artifact(
        artifact,
        mode,
        out,
        calib_data=calib_data,
        dataset=dataset,
        calib_samples=calib_samples,
        method=method,
        per_channel=per_channel,
        max_accuracy_drop=max_accuracy_drop,
        force=force,
    )
    c = result.comparison
    if as_json:
        print_json(result.to_dict())
    else:
        ratio = result.size_bytes / result.baseline_size_bytes
        low, high = c.drop_ci_points
        click.echo(
            f"{result.path}: {mode}, accuracy {c.accuracy:.4f} vs {c.baseline_accuracy:.4f} fp32 "
            f"on {c.samples} validation images (drop {c.accuracy_drop_points:.2f} points, 95% "
            f"interval {low:.2f} to {high:.2f}; top-1 agreement {c.top1_agreement:.3f}), "
            f"{result.size_bytes / 1e6:.2f} MB ({ratio:.0%} of fp32)"
        )
    if c.note:
        click.echo(f"note: {c.note}", err=True)
    if result.details.get("speed_warning"):
        click.echo(f"warning: {result.details['speed_warning']}", err=True)
    if not result.passed:
        click.echo(f"Error: {mode} {c.gate.reason}; the variant was not kept", err=True)
        ctx.exit(1)
