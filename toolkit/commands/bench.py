"""`dlkit bench`."""

from __future__ import annotations

import click

from toolkit.commands.output import (
    DAY_SECONDS,
    concurrency_levels,
    finite,
    json_option,
    model_timeout_option,
    positive_ints,
    print_json,
    target_device_option,
    threads_option,
)
from toolkit.variants.registry import default_variants, variants


@click.command()
@click.argument("artifacts", metavar="[ARTIFACT]...", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--model", help="Build the variants from this model (random weights), e.g. resnet18.")
@click.option(
    "--image-size",
    type=click.IntRange(8, 4096),
    default=224,
    show_default=True,
    help="With --model.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(2, 100_000),
    default=1000,
    show_default=True,
    help="With --model.",
)
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
@click.option(
    "--variants",
    help=(
        f"Comma-separated, or 'all'; built from --model or a checkpoint: {', '.join(variants())}. "
        f"Default on this machine's cpu: {','.join(default_variants('cpu'))} (file variants "
        f"that do not suit the model are left out); on cuda: "
        f"{','.join(default_variants('cuda'))}."
    ),
)
@target_device_option
@click.option(
    "--batch-sizes",
    default="1,8,32",
    show_default=True,
    callback=positive_ints,
    help="Comma-separated.",
)
@threads_option
@click.option(
    "--warmup",
    type=click.IntRange(0, 100_000),
    default=5,
    show_default=True,
    help="Warm-up iterations (at most 10 s of them).",
)
@click.option(
    "--iters",
    type=click.IntRange(1, 10_000_000),
    help="Iterations per measurement window (instead of --min-time).",
)
@click.option(
    "--min-time",
    type=float,
    callback=finite(0, 3600),
    help="Seconds per measurement window (default 0.5, at least 5 iterations).",
)
@click.option(
    "--windows",
    type=click.IntRange(2, 1000),
    default=3,
    show_default=True,
    help="Consecutive windows whose medians must agree, for every variant in the same rounds.",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.05,
    show_default=True,
    callback=finite(0, 1, above=True),
    help="How closely they must agree (relative range).",
)
@click.option(
    "--max-time",
    type=float,
    default=30.0,
    show_default=True,
    callback=finite(0, DAY_SECONDS, above=True),
    help="Seconds of measurement per batch size, all variants together: rounds stop when "
    "it is spent, and the figures not settled then are marked unstable.",
)
@click.option("--recheck", is_flag=True, help="Measure the first variant again at the end.")
@click.option(
    "--url",
    "urls",
    multiple=True,
    help="Benchmark a model served by Triton (HOST:PORT, grpc://… or http://…); --model, or "
    "the URL's path (…/MODEL or …/MODEL/VERSION), names it. Several servers (repeat, or "
    "comma-separated) share the load.",
)
@click.option(
    "--concurrency",
    default="1,4,16",
    show_default=True,
    callback=concurrency_levels,
    help="With --url: concurrent clients.",
)
@click.option(
    "--duration",
    type=float,
    default=5.0,
    show_default=True,
    callback=finite(0, DAY_SECONDS, above=True),
    help="With --url: seconds per concurrency level.",
)
@model_timeout_option
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
    urls,
    concurrency,
    duration,
    as_json,
    report_dir,
) -> None:
    """Latency and throughput of model variants, measured until the numbers are stable.

    Give ARTIFACT paths (ONNX and TorchScript files run as they are; the variants are built
    from a checkpoint) or --model NAME. Every variant gets the same thread budget (--threads)
    and their measurement windows are taken in turn, so load on a busy machine hits all of
    them alike. The table gives p50/p90/p95/p99/mean/std/min, throughput, peak memory, the
    spread of the windows and the speed-up against eager fp32; `!` marks a figure that did
    not settle. A variant that cannot run here is skipped with the reason.
    """
    from toolkit.bench.harness import MeasureConfig
    from toolkit.bench.report import format_table, write_report
    from toolkit.bench.run import run_benchmark
    from toolkit.errors import DlkitError

    if urls:
        from toolkit.triton.endpoints import parse_urls

        model = model or next((e.model for e in parse_urls(list(urls)) if e.model), None)
        if not model or artifacts or report_dir:
            raise DlkitError(
                "--url benchmarks one served model: name it in the URL "
                "(grpc://HOST:PORT/MODEL[/VERSION]) or give --model NAME (no files, no --report)"
            )
        _bench_serving(list(urls), model, concurrency, batch_sizes, duration, as_json)
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
        channels=int(channels),
        variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None,
        device=device,
        batch_sizes=batch_sizes,
        threads=threads,
        config=config,
        recheck=recheck,
    )
    if report_dir:
        for path in write_report(report, report_dir):
            click.echo(f"wrote {path}", err=True)
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(format_table(report))


def _bench_serving(urls, model, concurrency, batch_sizes, duration, as_json) -> None:
    """Closed-loop load on a served model: throughput and latency per concurrency level."""
    from toolkit.bench.environment import describe_environment
    from toolkit.bench.load import measure_serving
    from toolkit.tables import Column, render_text

    rows = []
    for batch_size in batch_sizes:
        click.echo(f"{model} at {','.join(urls)}, batch {batch_size} ...", err=True)
        for level in measure_serving(urls, model, concurrency, duration, batch_size):
            rows.append({"variant": f"triton:{model}", "device": "server", **level.to_dict()})
    if as_json:
        settings = {"url": ",".join(urls), "model": model, "duration_s": duration}
        print_json(
            {"environment": describe_environment("cpu"), "settings": settings, "results": rows}
        )
        return
    columns = [
        Column("batch", lambda r: str(r["batch_size"])),
        Column("clients", lambda r: str(r["concurrency"])),
        Column("p50 ms", lambda r: f"{r['latency_ms']['p50']:.3f}"),
        Column("p99 ms", lambda r: f"{r['latency_ms']['p99']:.3f}"),
        Column("images/s", lambda r: f"{r['throughput']:.1f}"),
        Column("failures", lambda r: str(r["failures"])),
    ]
    click.echo("\n".join(render_text(columns, rows)))
    for r in rows:  # what each failure was, not only how many
        for why, count in r["errors"].items():
            click.echo(f"batch {r['batch_size']}, {r['concurrency']} clients: {count} x {why}")
