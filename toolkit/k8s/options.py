"""What `dlkit k8s` is asked for (`K8sOptions`), checked and resolved into a `ServingSpec`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from toolkit.errors import DlkitError
from toolkit.k8s.store import ModelStore, parse_store, storage_uri
from toolkit.triton.release import TRITON_IMAGE

DEFAULT_NAME = "triton"
DEFAULT_IMAGE = "dlkit-triton:latest"  # the Dockerfile's image: the repository is at /models
DEFAULT_MAX_REPLICAS = 4
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIXES = {"": 1, "m": 1e-3} | {s: 1000.0**i for i, s in enumerate("kMGTPE", 1)}
_SUFFIXES |= {f"{s}i": 1024.0**i for i, s in enumerate("KMGTPE", 1)}
MAX_CPUS = 1024  # cores per pod: more than any node has
MAX_MEMORY = 64 * 1024.0**4  # bytes per pod (64 TiB)
MAX_GPUS = 64
MAX_REPLICAS = 10_000


@dataclass(frozen=True)
class K8sOptions:
    """The knobs of `dlkit k8s`; None means "derive it" (see `resolve`)."""

    name: str = DEFAULT_NAME
    image: str | None = None  # default: DEFAULT_IMAGE for the image store, else TRITON_IMAGE
    store: str = "image"
    replicas: int | None = None  # pods at first; the autoscaler's floor unless min_replicas
    min_replicas: int | None = None
    max_replicas: int | None = None  # default: DEFAULT_MAX_REPLICAS (or the floor, if higher)
    gpus: int = 0
    cpu: str = "1"
    cpu_limit: str = "2"
    memory: str = "4Gi"  # request and limit: a pod over its request is the first one evicted
    namespace: str | None = None
    kserve: bool = False
    target_queue_ms: float = 10.0
    target_cpu: int = 80


@dataclass(frozen=True)
class Replicas:
    start: int
    min: int
    max: int


@dataclass(frozen=True)
class ServingSpec:
    """Everything the manifests need, checked: options plus what was derived from them."""

    options: K8sOptions
    store: ModelStore
    models: tuple[str, ...]
    replicas: Replicas
    image: str
    python_models: dict[str, str] = field(default_factory=dict)  # name -> what it imports

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def target_queue_us(self) -> int:
        return round(self.options.target_queue_ms * 1000)


def resolve(
    options: K8sOptions, models: list[str], python_models: dict[str, str] | None = None
) -> ServingSpec:
    """Check `options` and derive the rest; raises DlkitError naming the option to fix.
    `python_models`: the python-backend models among `models`, with what they import."""
    _check_names(options)
    _check_sizes(options)
    store = parse_store(options.store)
    if options.kserve:
        storage_uri(store)  # refuses a store KServe cannot fetch
        if options.image is not None:
            raise DlkitError(
                "--image does not apply with --kserve: KServe's Triton runtime runs "
                f"{TRITON_IMAGE} (its runtimeVersion)"
            )
    image = options.image or (DEFAULT_IMAGE if store.kind == "image" else TRITON_IMAGE)
    replicas = resolve_replicas(options)
    return ServingSpec(options, store, tuple(models), replicas, image, dict(python_models or {}))


def plain_triton_warning(spec: ServingSpec) -> str:
    """What goes wrong when the pods run NGC's plain Triton image (a model store without
    --image, or KServe's runtime) on python-backend models: they import packages that image
    lacks and the pod crash-loops. "" when that cannot happen."""
    plain = spec.options.kserve or spec.image == TRITON_IMAGE
    if not (plain and spec.python_models):
        return ""
    names = ", ".join(spec.python_models)
    needs = ", ".join(sorted(set(spec.python_models.values())))
    fix = (
        "KServe runs that image whatever dlkit writes: package them with --backend native "
        "(and without --preprocess), or serve them with a Deployment (no --kserve) and --image"
        if spec.options.kserve
        else "build the Dockerfile's image (it installs dlkit with onnxruntime and torch), push "
        "it, and pass it with --image; or package them with --backend native (and without "
        "--preprocess)"
    )
    return (
        f"{names} run on Triton's python backend and import {needs}, which NGC's plain "
        f"Triton image ({TRITON_IMAGE}) does not have: its pods would crash-loop. {fix}"
    )


def resolve_replicas(options: K8sOptions) -> Replicas:
    """The starting count and the autoscaling range; each at least 1, start within the range."""
    given = {
        "--replicas": options.replicas,
        "--min-replicas": options.min_replicas,
        "--max-replicas": options.max_replicas,
    }
    for option, value in given.items():
        if value is not None and not 1 <= value <= MAX_REPLICAS:
            raise DlkitError(f"{option} must be from 1 to {MAX_REPLICAS} (got {value})")
    low, high, start = options.min_replicas, options.max_replicas, options.replicas
    if low is not None and high is not None and low > high:
        raise DlkitError(f"--min-replicas {low} is more than --max-replicas {high}")
    if low is None:
        low = start or 1
    if start is None:
        start = low
    if high is None:
        high = max(DEFAULT_MAX_REPLICAS, low, start)
    if start < low:
        raise DlkitError(f"--replicas {start} is less than --min-replicas {low}")
    if start > high:
        raise DlkitError(f"--replicas {start} is more than --max-replicas {high}")
    return Replicas(start, low, high)


def _check_names(options: K8sOptions) -> None:
    # Service names must also start with a letter (RFC 1035).
    if not _DNS_LABEL.match(options.name) or not options.name[0].isalpha():
        raise DlkitError(
            f"--name {options.name!r} is not a valid Kubernetes name: lower-case letters, "
            "digits and '-', starting with a letter, at most 63 characters"
        )
    if options.namespace is not None and not _DNS_LABEL.match(options.namespace):
        raise DlkitError(
            f"--namespace {options.namespace!r} is not a valid namespace: lower-case letters, "
            "digits and '-', at most 63 characters"
        )


def _check_sizes(options: K8sOptions) -> None:
    """Every size within what a node can give and an autoscaler can use."""
    cpus = (0.001, MAX_CPUS, f"from 1m to {MAX_CPUS} cores")  # Kubernetes counts in 1m
    cpu = _quantity("--cpu", options.cpu, "500m or 2", *cpus)
    cpu_limit = _quantity("--cpu-limit", options.cpu_limit, "500m or 2", *cpus)
    if cpu_limit < cpu:
        raise DlkitError(f"--cpu-limit {options.cpu_limit} is less than --cpu {options.cpu}")
    _quantity("--memory", options.memory, "512Mi or 4Gi", 1024.0**2, MAX_MEMORY, "from 1Mi to 64Ti")
    if not 0 <= options.gpus <= MAX_GPUS:
        raise DlkitError(f"--gpus must be from 0 to {MAX_GPUS} (got {options.gpus})")
    if not (math.isfinite(options.target_queue_ms) and 0 < options.target_queue_ms <= 60_000):
        got = options.target_queue_ms
        raise DlkitError(f"--target-queue-ms must be more than 0 and at most 60000 (got {got})")
    if not 0 < options.target_cpu <= 1000:
        raise DlkitError(f"--target-cpu must be from 1 to 1000 % (got {options.target_cpu})")


def _quantity(option: str, value: str, example: str, low: float, high: float, shown: str) -> float:
    """The value of a Kubernetes quantity (cores or bytes), from `low` to `high`."""
    found = _QUANTITY.match(value)
    if not found:
        raise DlkitError(f"{option} {value!r} is not a Kubernetes quantity (e.g. {example})")
    amount = float(found.group(1)) * _SUFFIXES[found.group(3) or ""]
    if not low <= amount <= high:
        raise DlkitError(f"{option} {value} must be {shown}")
    return amount
