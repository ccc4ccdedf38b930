"""`dlkit package`."""

from __future__ import annotations

import click

from toolkit.choices import Accelerator, Backend, Device, InstanceKind
from toolkit.commands.output import (
    choice,
    json_option,
    model_timeout_option,
    print_json,
    repo_option,
    trust_option,
)
from toolkit.triton.release import DEFAULT_QUEUE_DELAY_US


@click.command()
@click.argument(
    "artifacts", metavar="ARTIFACT...", nargs=-1, required=True, type=click.Path(dir_okay=False)
)
@repo_option
@click.option("--name", help="Model name (default: the artifact's file stem).")
@click.option(
    "--version", type=click.IntRange(1, 2**31 - 1), help="Version number (default: the next)."
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(0, 65536),
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
    type=click.IntRange(0, 10_000_000),
    default=DEFAULT_QUEUE_DELAY_US,
    show_default=True,
    help="How long a request may wait for others to batch with (microseconds).",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Model instances (parallel executions).",
)
@click.option(
    "--kind", type=choice(InstanceKind), default="auto", show_default=True, help="Where they run."
)
@click.option(
    "--device",
    type=choice(Device, Device.targets()),
    help="Serve on this device: cuda writes KIND_GPU instances (the python backend then runs "
    "the model on the GPU), cpu KIND_CPU ones [default: --kind decides].",
)
@click.option(
    "--threads",
    type=click.IntRange(0, 256),
    default=0,
    show_default=True,
    help="Intra-op threads per instance (0: the runtime decides).",
)
@click.option(
    "--backend",
    type=choice(Backend),
    help="native: Triton's own backend for the format (onnxruntime, pytorch, openvino: the "
    "NGC image); python: the python backend running the format's runtime (what the "
    "pip-installed server can serve). [default: the backend of the model's versions when "
    "the model exists, else native]",
)
@click.option(
    "--accelerator",
    type=choice(Accelerator),
    default="none",
    show_default=True,
    help="ONNX on the native onnxruntime backend: start this execution provider (openvino: "
    "ONNX Runtime's OpenVINO provider on the CPU; tensorrt: TensorRT's, fp16, engines cached, "
    "on GPU instances: --device cuda).",
)
@click.option(
    "--preprocess",
    is_flag=True,
    help="Add a preprocessing model and an ensemble that take image files.",
)
@click.option(
    "--replace-config",
    is_flag=True,
    help="Let a new version change the serving options of a model that exists (they apply to "
    "every version of it).",
)
@trust_option
@model_timeout_option
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
    device,
    threads,
    backend,
    accelerator,
    preprocess,
    replace_config,
    trust,
    as_json,
) -> None:
    """Write ARTIFACT (a dlkit ONNX, TorchScript or OpenVINO IR file) into a Triton model
    repository.

    Each run adds a new version folder, written in full before it appears; existing versions
    are left as they are. The config carries the class names and preprocessing, and labels.txt
    lets Triton answer top-k queries. TorchScript code is checked before it is packaged, since
    Triton will run it (see --trust).
    """
    from toolkit.log import logger
    from toolkit.triton.configs import ServingOptions, instance_kind
    from toolkit.triton.repository import PackageOptions, package_artifacts
    from toolkit.triton.server import unservable_here

    options = PackageOptions(
        backend=backend,
        serving=ServingOptions(
            max_batch_size=max_batch_size,
            dynamic_batching=dynamic_batching,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
            kind=instance_kind(device, kind),
            threads=threads,
            accelerator=accelerator,
        ),
        preprocess=preprocess,
        trust=trust,
        replace_config=replace_config,
    )
    results = package_artifacts(list(artifacts), repo, name, version, options)
    unservable = unservable_here(repo, [m for r in results for m in r.models])
    for model, why in unservable.items():
        logger.warning("warning: `dlkit serve` here cannot serve %s: %s", model, why)
    warnings = [w for r in results for w in version_warnings(repo, r)]
    for warning in warnings:
        logger.warning("warning: %s", warning)
    if as_json:
        models = [r.to_dict() for r in results]
        print_json(
            {"repository": repo, "models": models, "unservable_here": unservable}
            | {"warnings": warnings}
        )
        return
    for r in results:
        extra = f" (+ {', '.join(r.models[1:])})" if len(r.models) > 1 else ""
        click.echo(f"{r.artifact} -> {r.path}  [{r.platform}, max batch {r.max_batch_size}]{extra}")
        if r.backend_from_model:
            click.echo(f"  backend {r.backend}, as {r.model}'s versions have (--backend to choose)")
        if r.config_changes:
            click.echo(f"  config of {r.model} replaced, for every version: {r.config_changes}")
        if r.served_versions != [r.version]:
            served = ", ".join(map(str, r.served_versions)) or "none"
            click.echo(f"  Triton serves versions {served} of {r.model} (its version_policy)")


def version_warnings(repo: str, result) -> list[str]:
    """What keeps the version just written from being served: the model's version_policy,
    or a running `dlkit serve` on the repository (explicit model control loads a model's
    versions when it is loaded, not when they appear)."""
    from pathlib import Path

    from toolkit.triton.configs import CONFIG_FILE, read_config
    from toolkit.triton.lifetime import running_servers
    from toolkit.triton.versions import describe_policy

    model, version = result.model, result.version
    warnings = []
    if version not in result.served_versions:
        config = Path(repo) / model / CONFIG_FILE
        warnings.append(
            f"version {version} of {model} will not be served: {config} has version_policy "
            f"{describe_policy(read_config(config))}; add {version} there to serve it"
        )
    for server in running_servers(repo):
        url = f"http://{server['http']}/v2/repository/models/{model}/load"
        warnings.append(
            f"tritonserver (pid {server['pid']}, started by dlkit serve) serves {repo} with "
            f"explicit model control: it goes on serving what it loaded until {model} is "
            f"loaded again: `curl -X POST {url}` (or restart dlkit serve)"
        )
    return warnings
