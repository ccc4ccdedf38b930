"""`dlkit k8s`."""

from __future__ import annotations

import click

from toolkit.commands.output import json_option, print_json, repo_option


@click.command()
@repo_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="deploy/k8s",
    show_default=True,
    help="Folder for the manifests (written whole; see --force).",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists and is not empty.")
@click.option(
    "--model-store",
    "store",
    default="image",
    show_default=True,
    help="Where pods find the repository: image (baked in at /models by the Dockerfile), "
    "pvc:NAME, s3://BUCKET/PATH or gs://BUCKET/PATH.",
)
@click.option(
    "--image",
    help="Container image. Default: dlkit-triton:latest for --model-store image, else the NGC "
    "Triton image.",
)
@click.option("--name", default="triton", show_default=True, help="Name of every resource.")
@click.option("--namespace", help="Namespace for kustomization.yaml (default: kubectl's).")
@click.option("--replicas", type=int, help="Pods to start with (default: --min-replicas).")
@click.option("--min-replicas", type=int, help="Autoscaling floor (default: --replicas or 1).")
@click.option(
    "--max-replicas", type=int, help="Autoscaling ceiling (default: 4, or the floor if higher)."
)
@click.option("--gpus", type=int, default=0, show_default=True, help="nvidia.com/gpu per pod.")
@click.option("--cpu", default="1", show_default=True, help="CPU request per pod.")
@click.option("--cpu-limit", default="2", show_default=True, help="CPU limit per pod.")
@click.option("--memory", default="4Gi", show_default=True, help="Memory request and limit.")
@click.option(
    "--target-queue-ms",
    type=float,
    default=10.0,
    show_default=True,
    help="Scale out when the mean queue time per request passes this.",
)
@click.option(
    "--target-cpu",
    type=int,
    default=80,
    show_default=True,
    help="Fallback: scale out above this CPU utilisation (% of the request).",
)
@click.option("--kserve", is_flag=True, help="A KServe InferenceService instead.")
@json_option
def k8s(repo, out, force, as_json, **options) -> None:
    """Write Kustomize-ready Kubernetes manifests for Triton serving a model repository.

    A Deployment (every model in one pod), Service, PodDisruptionBudget, HorizontalPodAutoscaler
    on Triton's queue time with the Prometheus Adapter rule behind it, ServiceMonitor,
    kustomization.yaml and a README; or, with --kserve, a KServe InferenceService. Apply with
    `kubectl apply -k OUT`.
    """
    from toolkit.k8s import K8sOptions, write_k8s

    result = write_k8s(repo, out, K8sOptions(**options), force=force)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(result.to_dict())
        return
    click.echo(f"wrote {result.out}: {', '.join(result.files)}")
    click.echo(f"models (one pod): {', '.join(result.models)}")
    if result.python_backend_models:
        python = ", ".join(f"{m} ({needs})" for m, needs in result.python_backend_models.items())
        click.echo(f"python-backend models (the image must have what they import): {python}")
    click.echo(f"apply with: kubectl apply -k {result.out}   (see {result.out}/README.md)")
