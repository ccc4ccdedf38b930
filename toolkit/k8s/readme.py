"""The README written next to the manifests: how to apply them, what to change, how to watch."""

from __future__ import annotations

import os

from toolkit.k8s import metrics
from toolkit.k8s.manifests import EXIT_TIMEOUT_SECONDS, PRESTOP_SECONDS, server_args
from toolkit.k8s.options import ServingSpec
from toolkit.k8s.store import GCS_KEY_FILE, secret_name
from toolkit.triton.release import TRITON_IMAGE, TRITON_RELEASE, TRITON_SERVER_VERSION

# The Kubernetes schemas dlkit's tests validate these manifests against (kubernetes-validate).
VALIDATED_KUBERNETES = "1.30.0"
ADAPTER_VALUES = "prometheus-adapter-values.yaml"


def readme(spec: ServingSpec, repo: str, out: str, files: list[str]) -> str:
    """The README for `spec`: manifests for repository `repo`, written as `files` in `out`."""
    ns = f" -n {spec.options.namespace}" if spec.options.namespace else ""
    kind = "KServe InferenceService" if spec.options.kserve else "Deployment"
    parts = [
        f"# Triton on Kubernetes: {spec.name}\n\n"
        f"Written by `dlkit k8s` from `{repo}`: a {kind} of NVIDIA Triton Inference Server "
        f"{TRITON_SERVER_VERSION} (NGC {TRITON_RELEASE}) serving "
        f"{', '.join(f'`{m}`' for m in spec.models)} (model store: `{spec.store}`).\n\n"
        f"Files: {', '.join(f'`{f}`' for f in files)}.\n\n"
        "**Validated offline only.** dlkit's tests check manifests written by this command "
        f"against the Kubernetes {VALIDATED_KUBERNETES} schemas (kubernetes-validate), and that "
        "the autoscaling metric's series exist on a real tritonserver's `/metrics`. These files "
        "have not been applied to a cluster: review them, then try them in a test namespace.\n",
        _store_section(spec, repo),
        (_kserve_section if spec.options.kserve else _deployment_section)(spec, out, ns),
        "## What to change\n\n"
        "Rerun `dlkit k8s` with other options and `--force` (it replaces this folder whole), or "
        "edit the files: the image (`--image`, or `kustomize edit set image`), the model store "
        "(`--model-store`), resources (`--cpu`, `--cpu-limit`, `--memory`, `--gpus`), the "
        "namespace (`--namespace`, `namespace:` in `kustomization.yaml`), replicas "
        "(`--replicas`, `--min-replicas`, `--max-replicas`) and the autoscaling targets "
        "(`--target-queue-ms`, `--target-cpu`).\n",
    ]
    return "\n".join(parts)


def _store_section(spec: ServingSpec, repo: str) -> str:
    store, secret = spec.store, secret_name(spec.name)
    head = "## Before applying: the model repository\n\n"
    if store.kind == "image":
        return head + (
            f"The image `{spec.image}` must hold the repository at `/models`: the Dockerfile "
            "copies the folder its `MODEL_REPOSITORY` build argument names (default "
            "`model_repository`, a path inside the build context) there. Build it from the "
            "checkout, then push it where the cluster pulls from:\n\n"
            f"    docker build -t {spec.image} --build-arg MODEL_REPOSITORY={_in_context(repo)} "
            f". && docker push {spec.image}\n" + _python_section(spec)
        )
    if store.kind == "pvc":
        text = (
            f"The PersistentVolumeClaim `{store.location}` must exist in the namespace and hold "
            f"the contents of `{repo}` at its root (one folder per model).\n"
        )
    else:
        sync = "aws s3 sync" if store.kind == "s3" else "gsutil -m rsync -r"
        create = (
            "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=... "
            "--from-literal=AWS_DEFAULT_REGION=..."
            if store.kind == "s3"
            else f"--from-file={GCS_KEY_FILE}=KEY.json"
        )
        text = (
            f"Upload the repository, then create the Secret `{secret}` with read access to the "
            "bucket (dlkit never writes credentials):\n\n"
            f"    {sync} {repo} {store.location}\n"
            f"    kubectl create secret generic {secret} {create}\n"
        )
    if spec.options.kserve and store.cloud:
        text += (
            "\nFor KServe, annotate the Secret as KServe's storage documentation describes "
            f"(S3 endpoint and region); the ServiceAccount `{spec.name}` lists it for KServe's "
            "storage initializer.\n"
        )
    return head + text + _python_section(spec)


def _in_context(repo: str) -> str:
    """`repo` as a path relative to where `docker build .` runs (here), when it is below."""
    relative = os.path.relpath(repo)
    return repo if relative.startswith("..") else relative


def _python_section(spec: ServingSpec) -> str:
    """Which models need more than Triton's own image, and the image that has it."""
    if not spec.python_models:
        return ""
    listed = ", ".join(f"`{m}` ({needs})" for m, needs in spec.python_models.items())
    text = (
        f"\n### Python-backend models\n\n{listed} run on Triton's python backend: their "
        "`model.py` imports the package named beside each, in the image's own Python. "
        f"NGC's plain Triton image (`{TRITON_IMAGE}`) has the python backend but none of "
        "these: a pod running it on this repository fails to load them and, strict, "
        "crash-loops. The Dockerfile's image has them: built with `PYTHON_MODELS=1` (the "
        "default) it installs dlkit with onnxruntime and torch.\n"
    )
    if spec.options.kserve:
        return text + (
            "\nKServe's Triton runtime runs NGC's plain image, whatever these files say: "
            "package these models with `--backend native` (and without `--preprocess`), or "
            "serve the repository with a Deployment (`dlkit k8s` without `--kserve`) and "
            "`--image` set to the Dockerfile's image.\n"
        )
    if spec.image == TRITON_IMAGE:
        return text + (
            "\n**These manifests run the plain image.** Build and push the Dockerfile's image "
            "(with a model store the copy of the repository baked into it is not used), then "
            "write the manifests again with it:\n\n"
            "    docker build -t REGISTRY/dlkit-triton:TAG . && docker push "
            "REGISTRY/dlkit-triton:TAG\n"
            f"    dlkit k8s --model-store {spec.store} --image REGISTRY/dlkit-triton:TAG --force\n"
        )
    return text + f"\nBuild `{spec.image}` from the Dockerfile with `PYTHON_MODELS=1`.\n"


def _kserve_section(spec: ServingSpec, out: str, ns: str) -> str:
    return (
        "## Apply\n\n"
        f"    kubectl apply -k {out}\n    kubectl get inferenceservice {spec.name}{ns} -w\n\n"
        "KServe downloads the repository to `/mnt/models` and runs its Triton runtime "
        f"(runtimeVersion `{TRITON_RELEASE}-py3`), which loads every model it finds, so an "
        "ensemble and its steps are always in the same pod. KServe picks the ports and the "
        f"probes, and scales between {spec.replicas.min} and {spec.replicas.max} replicas "
        "itself (no HPA or ServiceMonitor is written for KServe).\n"
    )


def _deployment_section(spec: ServingSpec, out: str, ns: str) -> str:
    args = "    " + " \\\n      ".join(server_args(spec))
    return (
        "## Apply\n\n"
        f"    kubectl apply -k {out}\n    kubectl rollout status deployment/{spec.name}{ns}\n\n"
        "`servicemonitor.yaml` needs the Prometheus Operator's CRDs: remove it from "
        "`kustomization.yaml` on a cluster without them. GPUs (`--gpus`) need NVIDIA's device "
        "plugin or GPU operator on the nodes.\n\n"
        "## What runs\n\n"
        "Every model of the repository is served by the same pod: Triton runs an ensemble's "
        "steps inside one server, so an ensemble is never split across pods. The container "
        "runs (after the image's entrypoint):\n\n"
        f"{args}\n\n"
        "Model control is explicit, with every model named by `--load-model`: the same mode "
        "`dlkit serve` uses, so the pod loads exactly the models checked when these files were "
        "written, and a stray or half-uploaded folder in the store is ignored rather than "
        "loaded. Unlike `dlkit serve`, it is strict: `--strict-readiness=true` makes "
        "`/v2/health/ready` answer only when every model is ready, and `--exit-on-error=true` "
        "restarts a pod whose model fails to load (it shows as CrashLoopBackOff) instead of "
        "serving part of the repository. Explicit mode leaves Triton's load/unload API on; do "
        "not use it through the Service (it reaches one pod at random and replicas drift): "
        "change the models by writing these files again and rolling out.\n\n"
        "Ports: HTTP 8000, gRPC 8001, metrics 8002 (the Service and the pod name them `http`, "
        "`grpc`, `metrics`). Probes: startup and readiness on `/v2/health/ready`, liveness on "
        f"`/v2/health/live`. On shutdown the pod sleeps {PRESTOP_SECONDS} s (endpoints stop "
        f"sending it requests), then Triton finishes in-flight requests for up to "
        f"{EXIT_TIMEOUT_SECONDS} s. It runs as `triton-server` (uid 1000) with a read-only root "
        "filesystem; `/tmp` and `/dev/shm` are writable emptyDirs (the python backend needs "
        "both). The Service balances connections, not requests: a gRPC client keeps one "
        "connection, so new pods only get new clients (HTTP/1.1 clients spread better).\n\n"
        + _autoscaling_section(spec, ns)
    )


def _autoscaling_section(spec: ServingSpec, ns: str) -> str:
    rule = metrics.adapter_rule()
    path = f"namespaces/{spec.options.namespace or 'NAMESPACE'}/pods/*/{metrics.HPA_METRIC}"
    return (
        "## Autoscaling\n\n"
        f"The HPA keeps {spec.replicas.min} to {spec.replicas.max} replicas on the per-pod "
        f"custom metric `{metrics.HPA_METRIC}` (target {spec.target_queue_us} µs), with CPU "
        f"utilisation ({spec.options.target_cpu}% of the request) as a fallback. The metric is "
        "Triton's mean queue time per request over the last minute:\n\n"
        f"    {rule['metricsQuery']}\n\n"
        f"`{metrics.QUEUE_SERIES}` and `{metrics.REQUESTS_SERIES}` are summed over the pod's "
        "models before dividing, so every request counts once. The Prometheus Adapter rule "
        f"that produces it is in `{ADAPTER_VALUES}` (values for the prometheus-community "
        "chart; set `prometheus.url` to your Prometheus):\n\n"
        "    helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter "
        f"-n monitoring -f {ADAPTER_VALUES}\n\n"
        "Prometheus scrapes the pods through `servicemonitor.yaml` (kube-prometheus-stack only "
        "selects ServiceMonitors with its `release` label: add it). Watch it work:\n\n"
        f"    kubectl get hpa {spec.name}{ns} -w\n"
        f"    kubectl describe hpa {spec.name}{ns}\n"
        f'    kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta1/{path}"\n\n'
        "When the custom metric is missing, `kubectl describe hpa` says so; the HPA still "
        "scales up on CPU but does not scale down. The Deployment starts with "
        f"`replicas: {spec.replicas.start}`; applying the files again resets it to that until "
        "the HPA acts.\n"
    )
