"""`dlkit export`."""

from __future__ import annotations

import click

from toolkit.commands.output import finite, json_option, print_json


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--onnx", "onnx_", is_flag=True, help="Export ONNX (default: both formats).")
@click.option("--torchscript", is_flag=True, help="Export TorchScript (default: both formats).")
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
def export(
    ctx, checkpoint, onnx_, torchscript, out, opset, static_batch, atol, rtol, force, as_json
):
    """Export CHECKPOINT to ONNX and TorchScript and prove the outputs still match.

    Each artifact is compared with the eager model on the checkpoint's validation images at
    batch sizes 1 and 7; one that drifts beyond --atol and --rtol is not kept, and the command
    exits with status 1.
    """
    from toolkit.variants.export import export_checkpoint

    formats = tuple(f for f, on in (("onnx", onnx_), ("torchscript", torchscript)) if on)
    results = export_checkpoint(
        checkpoint,
        out,
        formats or ("onnx", "torchscript"),
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
