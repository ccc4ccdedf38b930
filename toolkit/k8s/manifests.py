"""Kubernetes manifests for Triton serving a model repository, as plain dicts.

One pod serves every model of the repository (an ensemble and its steps run in one Triton
process), with the server arguments `dlkit serve` uses, made strict: a model that fails to load
stops the pod, and the pod is ready only when every model is.
"""

from __future__ import annotations

from toolkit.k8s import metrics
from toolkit.k8s.options import ServingSpec
from toolkit.k8s.store import secret_name, storage_uri, store_env, store_volumes
from toolkit.triton.release import TRITON_RELEASE
from toolkit.triton.server import DEFAULT_PORTS, server_arguments

READY_PATH, LIVE_PATH = "/v2/health/ready", "/v2/health/live"
TRITON_UID = 1000  # the NGC image's `triton-server` user
STARTUP_SECONDS = 600  # loading large models (or downloading a bucket) can take minutes
PRESTOP_SECONDS = 10  # endpoints stop sending new requests before Triton stops taking them
EXIT_TIMEOUT_SECONDS = 30  # Triton finishes in-flight requests for up to this long
SHM_SIZE = "512Mi"  # python-backend models pass tensors through /dev/shm (64 MiB by default)
GPU_RESOURCE = "nvidia.com/gpu"


def labels(spec: ServingSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": spec.name,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/managed-by": "dlkit",
    }


def selector(spec: ServingSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name}


def _meta(spec: ServingSpec, name: str | None = None) -> dict:
    return {"name": name or spec.name, "labels": labels(spec)}


def resources(spec: ServingSpec) -> dict:
    """CPU and memory requests and limits, with the GPUs as a limit (their request follows)."""
    options = spec.options
    limits = {"cpu": options.cpu_limit, "memory": options.memory}
    if options.gpus:
        limits[GPU_RESOURCE] = options.gpus
    return {"requests": {"cpu": options.cpu, "memory": options.memory}, "limits": limits}


def server_args(spec: ServingSpec) -> list[str]:
    """The container's arguments: tritonserver as `dlkit serve` runs it, strict, all models."""
    strict = server_arguments(spec.store.repository, list(spec.models), strict=True)
    return ["tritonserver", *strict, f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}"]


def _probe(path: str, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def container(spec: ServingSpec) -> dict:
    """The tritonserver container."""
    _, store_mounts = store_volumes(spec.store, spec.name)
    env = store_env(spec.store, spec.name)
    return {
        "name": "tritonserver",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        # Arguments only: the image's entrypoint (NVIDIA's start-up checks) then runs them.
        "args": server_args(spec),
        "ports": [
            {"name": kind, "containerPort": port, "protocol": "TCP"}
            for kind, port in DEFAULT_PORTS.items()
        ],
        **({"env": env} if env else {}),
        "resources": resources(spec),
        "startupProbe": _probe(READY_PATH, 10, STARTUP_SECONDS // 10),
        "readinessProbe": _probe(READY_PATH, 5, 3),
        "livenessProbe": _probe(LIVE_PATH, 10, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *store_mounts,
        ],
    }


def pod_spec(spec: ServingSpec) -> dict:
    """The pod: non-root, no API token, spread over nodes, time to drain on shutdown."""
    store_vols, _ = store_volumes(spec.store, spec.name)
    return {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + EXIT_TIMEOUT_SECONDS + 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRITON_UID,
            "runAsGroup": TRITON_UID,
            "fsGroup": TRITON_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(spec)},
            }
        ],
        "containers": [container(spec)],
        "volumes": [
            # Writable scratch: the python backend and bucket downloads need it.
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
            *store_vols,
        ],
    }


def deployment(spec: ServingSpec) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec),
        "spec": {
            "replicas": spec.replicas.start,
            "selector": {"matchLabels": selector(spec)},
            # A new pod must be ready before an old one goes: capacity never drops in a rollout.
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels(spec)}, "spec": pod_spec(spec)},
        },
    }


def service(spec: ServingSpec) -> dict:
    ports = [
        {"name": kind, "port": port, "targetPort": kind, "protocol": "TCP"}
        for kind, port in DEFAULT_PORTS.items()
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec),
        "spec": {"type": "ClusterIP", "selector": selector(spec), "ports": ports},
    }


def pod_disruption_budget(spec: ServingSpec) -> dict:
    # maxUnavailable rather than minAvailable: a single replica never blocks a node drain.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(spec)}},
    }


def service_monitor(spec: ServingSpec) -> dict:
    endpoint = {"port": "metrics", "path": "/metrics", "interval": metrics.SCRAPE_INTERVAL}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(spec),
        "spec": {"selector": {"matchLabels": selector(spec)}, "endpoints": [endpoint]},
    }


def autoscaler(spec: ServingSpec) -> dict:
    options = spec.options
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(spec),
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": spec.replicas.min,
            "maxReplicas": spec.replicas.max,
            "metrics": metrics.hpa_metrics(spec.target_queue_us, options.target_cpu),
        },
    }


def inference_service(spec: ServingSpec) -> dict:
    """A KServe InferenceService on KServe's Triton runtime (it loads every model it finds)."""
    model = {
        "modelFormat": {"name": "triton"},
        "runtimeVersion": f"{TRITON_RELEASE}-py3",
        "storageUri": storage_uri(spec.store),
        "resources": resources(spec),
    }
    predictor = {"minReplicas": spec.replicas.min, "maxReplicas": spec.replicas.max}
    if spec.store.cloud:
        predictor["serviceAccountName"] = spec.name
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _meta(spec),
        "spec": {"predictor": {**predictor, "model": model}},
    }


def service_account(spec: ServingSpec) -> dict:
    """For KServe: the account whose Secret the storage initializer reads the bucket with."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(spec),
        "secrets": [{"name": secret_name(spec.name)}],
    }


def build_manifests(spec: ServingSpec) -> dict[str, dict]:
    """File name -> manifest, in the order `kustomization.yaml` lists them."""
    if spec.options.kserve:
        files = {"inferenceservice.yaml": inference_service(spec)}
        if spec.store.cloud:
            files["serviceaccount.yaml"] = service_account(spec)
        return files
    return {
        "deployment.yaml": deployment(spec),
        "service.yaml": service(spec),
        "pdb.yaml": pod_disruption_budget(spec),
        "hpa.yaml": autoscaler(spec),
        "servicemonitor.yaml": service_monitor(spec),
    }


def kustomization(spec: ServingSpec, files: list[str]) -> dict:
    out = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if spec.options.namespace:
        out["namespace"] = spec.options.namespace
    return {**out, "resources": files}
