"""`dlkit quantize`."""

from __future__ import annotations

import click

from toolkit.commands.output import json_option, max_accuracy_drop_option, print_json


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--mode",
    type=click.Choice(["dynamic", "static", "fp16", "bf16"]),
    required=True,
    help="int8 dynamic/static, or fp16 for GPUs.",
)
@click.option(
    "--calib-data",
    type=click.Path(),
    help="Calibration images (a folder) or preprocessed inputs (.npy). "
    "Default: the model's training split.",
)
@click.option("--dataset", type=click.Choice(["digits"]), help="Calibrate on an embedded dataset.")
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option(
    "--method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
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

    The quantized model and its source are both evaluated on the validation split; a variant
    that loses more than --max-accuracy-drop points is not kept and the command exits 1.
    bf16 is an inference option for checkpoints (`--autocast bf16` where runners are used),
    not an ONNX transform.
    """
    from toolkit.errors import DlkitError
    from toolkit.quantize import quantize_artifact

    if mode == "bf16":
        raise DlkitError(
            "bf16 is not an ONNX transform here; run checkpoints with bf16 autocast instead "
            "(runner option autocast='bf16', `dlkit bench` variant eager-amp)"
        )
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
    if as_json:
        print_json(result.to_dict())
    else:
        ratio = result.size_bytes / result.baseline_size_bytes
        click.echo(
            f"{result.path}: {mode}, accuracy {result.accuracy:.4f} vs "
            f"{result.baseline_accuracy:.4f} fp32 (drop {result.accuracy_drop_points:.2f} "
            f"points, top-1 agreement {result.top1_agreement:.3f}), "
            f"{result.size_bytes / 1e6:.2f} MB ({ratio:.0%} of fp32)"
        )
    if not result.passed:
        click.echo(
            f"Error: {mode} loses {result.accuracy_drop_points:.2f} points of accuracy, more than "
            f"--max-accuracy-drop {max_accuracy_drop:g}; the variant was not kept",
            err=True,
        )
        ctx.exit(1)
