"""`dlkit package`."""

from __future__ import annotations

import click

from toolkit.commands.output import json_option, print_json, repo_option


@click.command()
@click.argument(
    "artifacts", metavar="ARTIFACT...", nargs=-1, required=True, type=click.Path(dir_okay=False)
)
@repo_option
@click.option("--name", help="Model name (default: the artifact's file stem).")
@click.option("--version", type=int, help="Version number (default: the next free one).")
@click.option(
    "--max-batch-size",
    type=int,
    help="Largest batch Triton forms [default: 32; 0 for a fixed-batch artifact].",
)
@click.option(
    "--dynamic-batching/--no-dynamic-batching",
    default=True,
    show_default=True,
    help="Let Triton group concurrent requests into batches.",
)
@click.option(
    "--max-queue-delay-us",
    type=int,
    default=2000,
    show_default=True,
    help="How long a request may wait for others to batch with (microseconds).",
)
@click.option(
    "--instances",
    type=int,
    default=1,
    show_default=True,
    help="Model instances (parallel executions).",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Where instances run.",
)
@click.option(
    "--threads",
    type=int,
    default=0,
    show_default=True,
    help="Intra-op threads per instance (0: the runtime decides).",
)
@click.option(
    "--backend",
    type=click.Choice(["native", "python"]),
    default="native",
    show_default=True,
    help="native: Triton's ONNX Runtime/PyTorch backends (the NGC image); python: "
    "the python backend (what the pip-installed server can serve).",
)
@click.option(
    "--preprocess",
    is_flag=True,
    help="Add a preprocessing model and an ensemble that take image files.",
)
@json_option
def package(
    artifacts,
    repo,
    name,
    version,
    max_batch_size,
    dynamic_batching,
    max_queue_delay_us,
    instances,
    kind,
    threads,
    backend,
    preprocess,
    as_json,
) -> None:
    """Write ARTIFACT (dlkit ONNX or TorchScript) into a Triton model repository.

    Each run adds a new version folder, written in full before it appears; existing versions
    are left as they are. The config carries the class names and preprocessing, and labels.txt
    lets Triton answer top-k queries.
    """
    from toolkit.triton.repository import PackageOptions, package_artifacts

    options = PackageOptions(
        backend=backend,
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
        threads=threads,
        preprocess=preprocess,
    )
    results = package_artifacts(list(artifacts), repo, name, version, options)
    if as_json:
        print_json({"repository": repo, "models": [r.to_dict() for r in results]})
        return
    for r in results:
        extra = f" (+ {', '.join(r.models[1:])})" if len(r.models) > 1 else ""
        click.echo(f"{r.artifact} -> {r.path}  [{r.platform}, max batch {r.max_batch_size}]{extra}")
