"""`dlkit deploy`."""

from __future__ import annotations

import click

from toolkit.commands.output import json_option, max_accuracy_drop_option, print_json, repo_option


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="Train on this ImageFolder when no CHECKPOINT is given.",
)
@click.option(
    "--dataset", type=click.Choice(["digits"]), help="Train on an embedded dataset (the default)."
)
@click.option("--epochs", type=int, help="Training epochs when no CHECKPOINT is given.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Target to optimise for.",
)
@max_accuracy_drop_option
@click.option(
    "--objective",
    type=click.Choice(["latency", "throughput"]),
    default="latency",
    show_default=True,
)
@click.option(
    "--batch-sizes",
    default="1,8",
    show_default=True,
    help="Latency at the smallest, throughput at the largest.",
)
@repo_option
@click.option(
    "--name",
    default="classifier",
    show_default=True,
    help="Triton model name (the fallback gets _fallback).",
)
@click.option(
    "--smoke-test/--no-smoke-test",
    default=True,
    show_default=True,
    help="Serve briefly and check served predictions.",
)
@click.option(
    "--serve/--no-serve",
    default=False,
    show_default=True,
    help="Keep serving after the smoke test until Ctrl-C.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Run folder (default runs/deploy-<time>)."
)
@json_option
def deploy(
    checkpoint,
    data,
    dataset,
    epochs,
    device,
    max_accuracy_drop,
    objective,
    batch_sizes,
    repo,
    name,
    smoke_test,
    serve,
    out,
    as_json,
) -> None:
    """Train (if no CHECKPOINT), export, quantize, verify and benchmark every variant, then
    package the fastest one within the accuracy budget for Triton and smoke-test it.

    The run folder gets report.md, report.json and accuracy_latency.png; variants that fail a
    gate are listed with the reason.
    """
    from toolkit.deploy import DeployConfig
    from toolkit.deploy import deploy as run_deploy
    from toolkit.errors import DlkitError

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise DlkitError(f"--batch-sizes takes numbers like 1,8; got {batch_sizes!r}") from None
    config = DeployConfig(
        checkpoint=checkpoint,
        data=data,
        dataset=dataset,
        epochs=epochs,
        device=device,
        max_accuracy_drop=max_accuracy_drop,
        objective=objective,
        batch_sizes=sizes,
        repo=repo,
        name=name,
        smoke_test=smoke_test,
        serve=serve,
        out=out,
    )
    report = run_deploy(config)
    selected = report["selected"]
    if as_json:
        print_json(
            {
                "selected": selected,
                "variants": report["variants"],
                "report": f"{report['run_dir']}/report.md",
                "repository": report["repository"],
                "packaged": report["packaged"],
                "smoke_test": report.get("smoke_test"),
                "stage_seconds": report["stage_seconds"],
            }
        )
        return
    speedup = report.get("speedup_vs_eager_fp32")
    click.echo(
        f"selected {selected['name']}: accuracy {selected['accuracy']:.4f}, "
        f"p50 {selected['latency_ms']['p50']:.3f} ms"
        + (f" ({speedup:.2f}x eager fp32)" if speedup else "")
    )
    for model in report["packaged"]:
        click.echo(
            f"packaged {model['variant']} as {model['model']} v{model['version']} "
            f"in {report['repository']}"
        )
    if report.get("smoke_test"):
        smoke = report["smoke_test"]
        click.echo(
            f"smoke test: {smoke['samples']} images, top-1 agreement {smoke['top1_agreement']:.3f}"
        )
    click.echo(f"report: {report['run_dir']}/report.md ({report['total_seconds']:.0f}s in all)")
