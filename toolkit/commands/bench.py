"""`dlkit bench`."""

from __future__ import annotations

import click

from toolkit.bench.variants import DEFAULT_VARIANTS, VARIANTS
from toolkit.commands.output import json_option, print_json


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be positive integers, e.g. 1,8,32")
    return sizes


@click.command()
@click.argument("artifacts", metavar="[ARTIFACT]...", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--model", help="Build the variants from this model (random weights), e.g. resnet18.")
@click.option("--image-size", type=int, default=224, show_default=True, help="With --model.")
@click.option("--num-classes", type=int, default=1000, show_default=True, help="With --model.")
@click.option("--channels", type=int, default=3, show_default=True, help="With --model.")
@click.option(
    "--variants",
    help=(
        f"Comma-separated, or 'all'; built from --model or a checkpoint: {', '.join(VARIANTS)}. "
        f"Default on cpu: {','.join(DEFAULT_VARIANTS['cpu'])}; on cuda: "
        f"{','.join(DEFAULT_VARIANTS['cuda'])}."
    ),
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--batch-sizes",
    default="1,8,32",
    show_default=True,
    callback=_int_list,
    help="Comma-separated.",
)
@click.option("--threads", type=int, help="torch and ONNX Runtime threads (default: theirs).")
@click.option(
    "--warmup",
    type=int,
    default=5,
    show_default=True,
    help="Warm-up iterations (at most 10 s of them).",
)
@click.option(
    "--iters", type=int, help="Iterations per measurement window (instead of --min-time)."
)
@click.option(
    "--min-time",
    type=float,
    help="Seconds per measurement window (default 0.5, at least 5 iterations).",
)
@click.option(
    "--windows",
    type=int,
    default=3,
    show_default=True,
    help="Consecutive windows whose medians must agree.",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.05,
    show_default=True,
    help="How closely they must agree (relative range).",
)
@click.option(
    "--max-time",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds of measurement per variant and batch size before reporting it unstable.",
)
@click.option("--recheck", is_flag=True, help="Measure the first variant again at the end.")
@click.option(
    "--url",
    help="Benchmark a model served by Triton (HOST:PORT, grpc://… or http://…); --model names it.",
)
@click.option(
    "--concurrency",
    default="1,4,16",
    show_default=True,
    callback=_int_list,
    help="With --url: concurrent clients.",
)
@click.option(
    "--duration",
    type=float,
    default=5.0,
    show_default=True,
    help="With --url: seconds per concurrency level.",
)
@json_option
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Also write JSON, Markdown, PNG.",
)
def bench(
    artifacts,
    model,
    image_size,
    num_classes,
    channels,
    variants,
    device,
    batch_sizes,
    threads,
    warmup,
    iters,
    min_time,
    windows,
    tolerance,
    max_time,
    recheck,
    url,
    concurrency,
    duration,
    as_json,
    report_dir,
) -> None:
    """Latency and throughput of model variants, measured until the numbers are stable.

    Give ARTIFACT paths (ONNX and TorchScript files run as they are; the variants are built
    from a checkpoint) or --model NAME. Each variant and batch size is warmed up, then timed in
    windows until consecutive windows agree; the table gives p50/p90/p95/p99/mean/std/min,
    throughput, peak memory, the spread of the windows and the speed-up against eager fp32.
    A variant that cannot run here is skipped with the reason.
    """
    from toolkit.bench.harness import MeasureConfig
    from toolkit.bench.report import format_table, write_report
    from toolkit.bench.run import run_benchmark
    from toolkit.errors import DlkitError

    if url:
        if not model or artifacts or report_dir:
            raise DlkitError(
                "--url benchmarks one served model: give --model NAME (no files, no --report)"
            )
        _bench_serving(url, model, concurrency, batch_sizes, duration, as_json)
        return
    if iters is not None and min_time is not None:
        raise DlkitError("give either --iters or --min-time, not both")
    config = MeasureConfig(
        warmup=warmup,
        iters=iters,
        min_time=0.5 if min_time is None else min_time,
        windows=windows,
        tolerance=tolerance,
        max_time=max_time,
    )
    report = run_benchmark(
        artifacts,
        model,
        image_size=image_size,
        num_classes=num_classes,
        channels=channels,
        variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None,
        device=device,
        batch_sizes=batch_sizes,
        threads=threads,
        config=config,
        recheck=recheck,
        progress=lambda message: click.echo(message, err=True),
    )
    if report_dir:
        for path in write_report(report, report_dir):
            click.echo(f"wrote {path}", err=True)
    if as_json:
        print_json(report)
    else:
        click.echo(format_table(report))


def _bench_serving(url, model, concurrency, batch_sizes, duration, as_json) -> None:
    """Closed-loop load on a served model: throughput and latency per concurrency level."""
    from toolkit.bench.environment import describe_environment
    from toolkit.triton.client import measure_serving

    rows = []
    for batch_size in batch_sizes:
        click.echo(f"{model} at {url}, batch {batch_size} ...", err=True)
        for row in measure_serving(url, model, concurrency, duration, batch_size):
            rows.append({"variant": f"triton:{model}", "device": "server", **row})
    if as_json:
        print_json(
            {
                "environment": describe_environment("cpu"),
                "settings": {"url": url, "model": model, "duration_s": duration},
                "results": rows,
            }
        )
        return
    click.echo(
        f"{'batch':>5} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>10} {'failures':>8}"
    )
    for r in rows:
        lat = r["latency_ms"]
        click.echo(
            f"{r['batch_size']:>5} {r['concurrency']:>7} {lat['p50']:>8.3f} {lat['p99']:>8.3f} "
            f"{r['throughput']:>10.1f} {r['failures']:>8}"
        )
