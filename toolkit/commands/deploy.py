"""`dlkit deploy`."""

from __future__ import annotations

import click

from toolkit.choices import Backend, Dataset, Objective
from toolkit.commands.output import (
    choice,
    finite,
    json_option,
    max_accuracy_drop_option,
    positive_ints,
    print_json,
    repo_option,
    target_device_option,
    threads_option,
)


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="Train on this ImageFolder when no CHECKPOINT is given.",
)
@click.option("--dataset", type=choice(Dataset), help="Train on an embedded dataset (default).")
@click.option(
    "--epochs", type=click.IntRange(1, 100_000), help="Training epochs when no CHECKPOINT is given."
)
@click.option("--model", help="What to train when no CHECKPOINT is given (default smallresnet).")
@click.option(
    "--image-size",
    type=click.IntRange(8, 4096),
    help="Training image size when no CHECKPOINT is given.",
)
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    help="1 grayscale or 3 RGB, when no CHECKPOINT is given (as `dlkit train --channels`).",
)
@click.option(
    "--lr",
    type=float,
    callback=finite(0, 100, above=True),
    help="Peak learning rate, when no CHECKPOINT is given.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1_000_000),
    help="Training batch size, when no CHECKPOINT is given.",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(1, 1_000_000),
    help="Static int8 calibration images [default: 256, or all training images when fewer].",
)
@click.option(
    "--variants",
    help="Comma-separated file variants to try (default: every one the device can package; "
    "onnx-fp32 is always built, as the fallback).",
)
@target_device_option
@max_accuracy_drop_option
@click.option("--objective", type=choice(Objective), default="latency", show_default=True)
@click.option(
    "--batch-sizes",
    default="1,8",
    show_default=True,
    callback=positive_ints,
    help="Latency at the smallest, throughput at the largest.",
)
@threads_option
@click.option(
    "--bench-seconds",
    type=float,
    default=0.5,
    show_default=True,
    callback=finite(0, 3600, above=True),
    help="Seconds per benchmark window.",
)
@click.option(
    "--tune/--no-tune",
    default=False,
    show_default=True,
    help="After packaging, choose the serving config by measuring the real server under load "
    "(dlkit tune); a better one becomes a new version.",
)
@click.option(
    "--tune-objective",
    type=choice(Objective),
    default="throughput",
    show_default=True,
    help="What --tune optimises on the server: most images/s at the top concurrency, or the "
    "lowest p99 at concurrency 1 (--objective picks the variant, in process).",
)
@click.option(
    "--tune-minutes",
    type=float,
    default=2.0,
    show_default=True,
    callback=finite(0, 1440, above=True),
    help="Time for the --tune search.",
)
@repo_option
@click.option(
    "--backend",
    type=choice(Backend),
    help="Triton backend for the packaged models [default: native where this machine's "
    "tritonserver has ONNX Runtime, else python].",
)
@click.option(
    "--preprocess",
    is_flag=True,
    help="Also package an ensemble that takes image files (as `dlkit package --preprocess`).",
)
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
    model,
    image_size,
    channels,
    lr,
    batch_size,
    calib_samples,
    variants,
    device,
    max_accuracy_drop,
    objective,
    batch_sizes,
    threads,
    bench_seconds,
    tune,
    tune_objective,
    tune_minutes,
    repo,
    backend,
    preprocess,
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

    config = DeployConfig(
        checkpoint=checkpoint,
        data=data,
        dataset=dataset,
        epochs=epochs,
        model=model,
        image_size=image_size,
        channels=int(channels) if channels else None,
        lr=lr,
        batch_size=batch_size,
        calib_samples=calib_samples,
        backend=backend,
        preprocess=preprocess,
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None,
        device=device,
        max_accuracy_drop=max_accuracy_drop,
        objective=objective,
        batch_sizes=tuple(batch_sizes),
        threads=threads,
        bench_seconds=bench_seconds,
        tune=tune,
        tune_objective=tune_objective,
        tune_minutes=tune_minutes,
        repo=repo,
        name=name,
        smoke_test=smoke_test,
        serve=serve,
        out=out,
    )
    report = run_deploy(config)
    if as_json:
        print_json(
            {
                "selected": report.selected.to_dict(),
                "variants": [v.to_dict() for v in report.variants],
                "report": f"{report.run_dir}/report.md",
                "repository": report.repository,
                "packaged": report.packaged,
                "smoke_test": report.smoke_test,
                "served": report.served,
                "skipped_stages": report.skipped_stages,
                "stage_seconds": report.stage_seconds,
            }
        )
        return
    _print_summary(report)


def _print_summary(report) -> None:
    selected, speedup = report.selected, report.speedup_vs_eager_fp32
    claim = ""
    if speedup and report.speedup_stable:
        claim = f" ({speedup:.2f}x eager fp32)"
    elif speedup:
        claim = " (no speed-up claimed: the timings did not settle; see the report)"
    images = f" on {selected.samples} validation images" if selected.samples else ""
    click.echo(
        f"selected {selected.name}: accuracy {selected.accuracy:.4f}{images}, "
        f"p50 {selected.latency_ms['p50']:.3f} ms{claim}"
    )
    for model in report.packaged:
        click.echo(
            f"packaged {model['variant']} as {model['model']} v{model['version']} "
            f"in {report.repository}"
        )
    if report.served:
        click.echo(f"tuned for {report.served['objective']}: {report.served['chosen']}")
        for row in report.served["levels"]:
            d, t = row["default"], row["tuned"]
            click.echo(
                f"served at concurrency {row['concurrency']}: {d['throughput']:.0f} -> "
                f"{t['throughput']:.0f} images/s, p99 {d['p99_ms']:.2f} -> {t['p99_ms']:.2f} ms "
                "(default -> tuned)"
            )
    for stage, why in report.skipped_stages.items():
        click.echo(f"skipped {stage}: {why}")
    if report.smoke_test:
        smoke = report.smoke_test
        click.echo(
            f"smoke test: {smoke['samples']} images, top-1 agreement {smoke['top1_agreement']:.3f}"
        )
    click.echo(f"report: {report.run_dir}/report.md ({report.total_seconds:.0f}s in all)")
