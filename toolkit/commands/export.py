"""`dlkit export`: one flag per exportable format (each format plugin that says so)."""

from __future__ import annotations

import click

from toolkit.artifacts.registry import plugins
from toolkit.commands.output import finite, json_option, print_json

DEFAULT_FORMATS = ("onnx", "torchscript")


def format_flags(command):
    """A `--<format>` flag for every exportable format, collected into `formats`."""
    for plugin in reversed([p for p in plugins() if p.exportable]):
        command = click.option(
            f"--{plugin.name}",
            "formats",
            flag_value=plugin.name,
            multiple=True,
            help=f"Export {plugin.name} (default: {' and '.join(DEFAULT_FORMATS)}).",
        )(command)
    return command


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@format_flags
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output folder (default: beside the checkpoint).",
)
@click.option(
    "--opset",
    type=click.IntRange(18, 23),
    default=18,
    show_default=True,
    help="ONNX opset (torch's exporter writes 18 or newer).",
)
@click.option(
    "--static-batch",
    type=click.IntRange(1, 65536),
    help="Fix the batch dimension to this size (default: dynamic).",
)
@click.option(
    "--atol",
    type=float,
    default=1e-4,
    show_default=True,
    callback=finite(0, 1e6),
    help="Parity: absolute tolerance.",
)
@click.option(
    "--rtol",
    type=float,
    default=1e-3,
    show_default=True,
    callback=finite(0, 1e6),
    help="Parity: relative tolerance.",
)
@click.option("--force", is_flag=True, help="Replace existing artifacts.")
@json_option
@click.pass_context
def export(ctx, checkpoint, formats, out, opset, static_batch, atol, rtol, force, as_json):
    """Export CHECKPOINT (ONNX and TorchScript by default; --openvino writes OpenVINO IR) and
    prove the outputs still match.

    Each artifact is compared with the eager model on the checkpoint's validation images at
    batch sizes 1 and 7; one that drifts beyond --atol and --rtol is not kept, and the command
    exits with status 1.
    """
    from toolkit.variants.export import export_checkpoint

    results = export_checkpoint(
        checkpoint,
        out,
        tuple(dict.fromkeys(formats)) or DEFAULT_FORMATS,
        opset=opset,
        static_batch=static_batch,
        atol=atol,
        rtol=rtol,
        force=force,
    )
    if as_json:
        print_json({"artifacts": [r.to_dict() for r in results]})
    else:
        for r in results:
            p = r.parity
            verdict = "parity ok" if r.kept else "PARITY FAILED, not kept"
            if r.details.get("existing"):
                verdict = "exists, kept (--force replaces it); parity ok"
            click.echo(
                f"{r.format:<12} {r.path}  {verdict}: max abs err {p.max_abs_err:.2e}, "
                f"max rel err {p.max_rel_err:.2e}, cosine {p.cosine:.6f}, "
                f"top-1 agreement {p.top1_agreement:.3f} ({p.samples} samples, "
                f"batches {'/'.join(map(str, p.batch_sizes))})"
            )
    failed = [r for r in results if not r.kept]
    if failed:
        for r in failed:
            click.echo(
                f"Error: {r.format} export failed the parity check: {r.parity.summary()}", err=True
            )
        ctx.exit(1)
