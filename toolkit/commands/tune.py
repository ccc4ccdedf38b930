"""`dlkit tune`."""

from __future__ import annotations

import time

import click

from toolkit.choices import Device, Objective
from toolkit.commands.output import (
    DAY_SECONDS,
    choice,
    concurrency_levels,
    finite,
    json_option,
    max_accuracy_drop_option,
    model_timeout_option,
    print_json,
    repo_option,
    repository_trust_option,
)


@click.command()
@click.argument("artifacts", metavar="[ARTIFACT...]", nargs=-1, type=click.Path(exists=True))
@repo_option
@click.option(
    "--name",
    help="The model to tune in --repo (without ARTIFACT), or the name to write the tuned "
    "model under (default: the artifact's file stem, or the deploy run's model name).",
)
@click.option(
    "--concurrency",
    default="1,4,16",
    show_default=True,
    callback=concurrency_levels,
    help="Concurrency levels every trial is measured at (requests of one image).",
)
@click.option("--objective", type=choice(Objective), default="throughput", show_default=True,
              help="throughput: the most images/s at the highest concurrency; latency: the "
              "lowest p99 at the lowest.")  # fmt: skip
@click.option(
    "--p99-ms",
    type=float,
    callback=finite(0, DAY_SECONDS * 1000, above=True),
    help="Only configs whose p99 stays within this at every level qualify.",
)
@click.option(
    "--budget-minutes",
    type=float,
    default=10.0,
    show_default=True,
    callback=finite(0, 1440, above=True),
    help="Time for the search (the accuracy check and the report come after).",
)
@click.option("--device", type=choice(Device, Device.targets()), default="cpu", show_default=True)
@max_accuracy_drop_option
@click.option(
    "--window-seconds",
    type=float,
    default=1.0,
    show_default=True,
    callback=finite(0, 600, above=True),
    help="Length of one measurement window; a level takes windows until 3 agree (at most 5).",
)
@click.option(
    "--shared-memory",
    is_flag=True,
    help="Measure with tensors in system shared memory, as a client on the server's machine "
    "can send them.",
)
@click.option("--dry-run", is_flag=True, help="Measure and choose only: no accuracy check, "
              "nothing written to the repository.")  # fmt: skip
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Folder for tune.md, tune.json and tune.png (default runs/tune-<time>).",
)
@repository_trust_option
@model_timeout_option
@json_option
def tune(
    artifacts,
    repo,
    name,
    concurrency,
    objective,
    p99_ms,
    budget_minutes,
    device,
    max_accuracy_drop,
    window_seconds,
    shared_memory,
    dry_run,
    report_dir,
    trust,
    as_json,
) -> None:
    """Choose how Triton serves a model by measuring the real server under load, then write
    the winner into the repository as a new version.

    Tunes ARTIFACT files (ONNX, TorchScript), the variants of a `dlkit deploy` run folder that
    passed their gates, or model --name already in --repo. One tritonserver serves the whole
    run; each trial loads its config through the repository API and is measured at every
    --concurrency level in stability windows, failures counted.

    Searched, by coordinate descent from the default config (never the whole cross product):
    the variant; dynamic batching on/off; max queue delay 0, 100, 500, 2000 µs; runtime
    intra-op threads 0 (the runtime decides), 1, 2, ... up to the cores; instances 1, 2, 4;
    max batch size 8-64; preferred batch sizes; inter-op threads 1, 2; and on CUDA the instance
    kind. The winner's accuracy is checked through the endpoint on the whole validation split
    before anything is written. --repo is only read until then; a model there that holds
    anything `dlkit package` does not write (which Triton would run) is refused unless --trust.
    """
    from toolkit.tune.run import TuneConfig
    from toolkit.tune.run import tune as run_tune

    config = TuneConfig(
        artifacts=list(artifacts),
        repo=repo,
        name=name,
        objective=objective,
        concurrency=tuple(concurrency),
        p99_ms=p99_ms,
        budget_minutes=budget_minutes,
        device=device,
        max_accuracy_drop=max_accuracy_drop,
        report=report_dir or f"runs/tune-{time.strftime('%Y%m%d-%H%M%S')}",
        window_seconds=window_seconds,
        shared_memory=shared_memory,
        dry_run=dry_run,
        trust=trust,
    )
    report = run_tune(config)
    if as_json:
        print_json(report.to_dict() | {"report": f"{config.report}/tune.md"})
        return
    _print_summary(report, config.report)


def _print_summary(report, folder: str) -> None:
    from toolkit.tables import render_text
    from toolkit.tune.report import breakdown_lines, comparison_lines, trial_columns

    for line in render_text(trial_columns(report), report.trials):
        click.echo(line)
    chosen = report.selected.config.describe(report.baseline.config)
    click.echo(f"\nchosen: trial {report.selected.index}, {chosen}")
    click.echo(f"decision: {report.decision}")
    for line in comparison_lines(report, markdown=False):
        click.echo(line)
    click.echo("\nwhere one request's time goes at concurrency 1:")
    for line in breakdown_lines(report, markdown=False):
        click.echo(line)
    if report.accuracy:
        a = report.accuracy
        click.echo(
            f"\naccuracy through the endpoint: {a['accuracy']:.4f} "
            f"({a['accuracy_drop_points']:.2f} points against {a['baseline']}), "
            f"top-1 agreement with the local runner {a['top1_agreement_with_local']:.3f}"
        )
    if report.written:
        w = report.written
        click.echo(f"written: {w['model']} version {w['version']} ({w['path']})")
        if w.get("config_changes"):
            click.echo(f"  config changed for every version: {w['config_changes']}")
        if w.get("instead_of"):
            click.echo(f"  not as {w['instead_of']}: {w['reason']}")
    click.echo(f"report: {folder}/tune.md")
