"""`dlkit k8s`: manifests valid against Kubernetes' schemas, consistent with `dlkit serve`, and an
autoscaling metric built from series a real tritonserver exports."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from toolkit.k8s import metrics
from toolkit.k8s.manifests import LIVE_PATH, READY_PATH
from toolkit.k8s.readme import ADAPTER_VALUES, VALIDATED_KUBERNETES
from toolkit.triton.release import TRITON_IMAGE, TRITON_RELEASE, TRITON_SERVER_VERSION
from toolkit.triton.server import DEFAULT_PORTS, ServerBinary, TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
STORES = ["image", "pvc:triton-models", "s3://bucket/triton", "gs://bucket/triton"]


def make_repo(root: Path, steps: tuple[str, ...] = ("m",)) -> Path:
    """A repository of hand-written configs: python model `m` and ensemble `ens` over `steps`."""
    repo = root / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "model.py").write_text("")  # dlkit serve skips a version without it
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    (repo / "ens").mkdir()
    step_text = "".join(f'step {{ model_name: "{s}" model_version: -1 }} ' for s in steps)
    (repo / "ens" / "config.pbtxt").write_text(
        f'name: "ens"\nplatform: "ensemble"\nensemble_scheduling {{ {step_text}}}\n'
    )
    return repo


def read_folder(out: Path) -> dict[str, dict]:
    """Every YAML file of `out` parsed with PyYAML: one document each."""
    docs = {}
    for path in sorted(out.glob("*.yaml")):
        [docs[path.name]] = list(yaml.safe_load_all(path.read_text()))
    return docs


def by_kind(docs: dict[str, dict]) -> dict[str, dict]:
    return {d["kind"]: d for name, d in docs.items() if name != ADAPTER_VALUES}


def test_the_dockerfile_takes_the_repository_as_a_build_argument():
    text = (ROOT / "Dockerfile").read_text()
    [default] = re.findall(r"^ARG MODEL_REPOSITORY=(\S+)$", text, re.M)
    assert default == "model_repository"
    copies = re.findall(r"^COPY (\S+) /models$", text, re.M)
    assert copies == ["${MODEL_REPOSITORY}"]
    # An ARG is in scope only after the FROM it follows.
    assert text.index("\nFROM ") < text.index("ARG MODEL_REPOSITORY") < text.index("COPY ${")


@pytest.fixture(scope="module")
def dlkit_repo(digits_checkpoint, tmp_path_factory) -> Path:
    """A repository `dlkit package` wrote: classifier `m` on the python backend (ONNX Runtime)
    with its preprocessing model and ensemble, and `n` on the native ONNX Runtime backend."""
    import dataclasses

    from toolkit.triton.repository import PackageOptions, package_artifact
    from toolkit.variants.export import export_checkpoint

    folder = tmp_path_factory.mktemp("k8s-dlkit")
    [onnx] = export_checkpoint(digits_checkpoint, folder, ("onnx",))
    repo = folder / "repo"
    python = dataclasses.replace(PackageOptions(backend="python"), preprocess=True)
    package_artifact(onnx.path, repo, "m", options=python)
    package_artifact(onnx.path, repo, "n")
    return repo


@pytest.mark.parametrize("store", ["pvc:triton-models", "s3://bucket/triton"])
@pytest.mark.parametrize("kserve", [False, True])
def test_python_backend_models_on_plain_triton_are_named(
    dlkit, dlkit_repo, tmp_path, store, kserve
):
    out = tmp_path / "k8s"
    args = ["--repo", dlkit_repo, "--out", out, "--model-store", store]
    result = dlkit("k8s", *args, *(["--kserve"] if kserve else []), "--json")
    written = json.loads(result.stdout)
    assert written["python_backend_models"] == {"m": "onnxruntime", "m_preprocess": "dlkit"}
    [warning] = written["warnings"]
    assert warning.startswith(
        "m, m_preprocess run on Triton's python backend and import dlkit, onnxruntime, which "
        f"NGC's plain Triton image ({TRITON_IMAGE}) does not have: its pods would crash-loop."
    )
    assert ("KServe runs that image" in warning) == kserve
    assert ("pass it with --image" in warning) == (not kserve)
    assert f"warning: {warning}" in result.stderr
    readme = (out / "README.md").read_text()
    assert "### Python-backend models" in readme and "`m_preprocess` (dlkit)" in readme
    assert ("These manifests run the plain image" in readme) == (not kserve)
    for manifest in by_kind(read_folder(out)).values():
        if manifest["kind"] in CORE_KINDS:
            kubernetes_validate.validate(manifest, VALIDATED_KUBERNETES, strict=True)
    # With the Dockerfile's image, the same repository warns of nothing.
    image = ["--image", "registry.example/dlkit-triton:1"]
    again = dlkit.json("k8s", *args, "--force", *([] if kserve else image))
    assert (again["warnings"] != []) == kserve


def test_the_readme_builds_the_image_from_the_repository_it_was_written_for(dlkit, tmp_path):
    repo, out = make_repo(tmp_path), tmp_path / "k8s"
    dlkit("k8s", "--repo", repo, "--out", out)
    readme = (out / "README.md").read_text()
    assert f"docker build -t dlkit-triton:latest --build-arg MODEL_REPOSITORY={repo} ." in readme


def test_pinned_kubernetes_version_is_one_kubernetes_validate_ships():
    assert VALIDATED_KUBERNETES in kubernetes_validate.utils.all_versions()


def test_one_triton_release_for_the_dockerfile_and_the_manifests():
    [arg] = re.findall(r"^ARG TRITON_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert arg == TRITON_RELEASE
    assert f"nvcr.io/nvidia/tritonserver:{arg}-py3" == TRITON_IMAGE


@pytest.mark.parametrize("store", STORES)
def test_manifests_validate_against_the_kubernetes_schemas(dlkit, tmp_path, store):
    out = tmp_path / "k8s"
    args = ["--repo", make_repo(tmp_path), "--out", out, "--model-store", store]
    dlkit("k8s", *args, "--gpus", "1", "--namespace", "serving")
    docs = read_folder(out)
    kinds = by_kind(docs)
    assert set(kinds) == CORE_KINDS | {"ServiceMonitor", "Kustomization"}
    for kind in CORE_KINDS:
        kubernetes_validate.validate(kinds[kind], VALIDATED_KUBERNETES, strict=True)
    kustomization = kinds["Kustomization"]
    assert kustomization["namespace"] == "serving"
    assert set(kustomization["resources"]) == set(docs) - {"kustomization.yaml", ADAPTER_VALUES}
    monitor, service = kinds["ServiceMonitor"], kinds["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["name"]
    # A ServiceMonitor selects Services by their labels, and names a port of theirs.
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    pod = kinds["Deployment"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    selector = kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert {"/tmp", "/dev/shm"} <= {m["mountPath"] for m in container["volumeMounts"]}
    text = "\n".join(p.read_text() for p in out.iterdir())
    assert "--from-literal=AWS_SECRET_ACCESS_KEY=..." in text or "s3" not in store
    assert not re.search(r"^\s*(data|stringData):", text, re.M)  # never a Secret's values


@pytest.mark.parametrize(
    ("store", "expected_repository", "expected_image"),
    [
        ("image", "/models", "dlkit-triton:latest"),
        ("pvc:triton-models", "/models", TRITON_IMAGE),
        ("s3://bucket/triton", "s3://bucket/triton", TRITON_IMAGE),
        ("gs://bucket/triton", "gs://bucket/triton", TRITON_IMAGE),
    ],
)
def test_the_model_store_decides_repository_image_and_credentials(
    dlkit, tmp_path, store, expected_repository, expected_image
):
    out = tmp_path / "k8s"
    dlkit("k8s", "--repo", make_repo(tmp_path), "--out", out, "--model-store", store)
    pod = by_kind(read_folder(out))["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == expected_image
    assert f"--model-repository={expected_repository}" in container["args"]
    env = {e["name"]: e for e in container.get("env", [])}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if store.startswith("pvc:"):
        assert mounts["/models"]["readOnly"] is True
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "triton-models"
    if store.startswith("s3:"):
        assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
        assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values()} == {
            "triton-model-store"
        }
    if store.startswith("gs:"):
        key = env["GOOGLE_APPLICATION_CREDENTIALS"]["value"]
        assert Path(key).parent.as_posix() in mounts
        assert volumes["gcs-key"]["secret"]["secretName"] == "triton-model-store"
    if store == "image":
        assert "/models" not in mounts and not env  # baked into the image


def test_deployment_runs_tritonserver_as_dlkit_serve_does_but_strict(dlkit, tmp_path):
    repo, out = make_repo(tmp_path), tmp_path / "k8s"
    dlkit("k8s", "--repo", repo, "--out", out)
    kinds = by_kind(read_folder(out))
    [container] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    pod_args = container["args"]
    backends = tmp_path / "backends"
    (backends / "python").mkdir(parents=True)
    binary = ServerBinary(Path("tritonserver"), backends, bundled=False)
    serve_args = TritonServer(repo, binary=binary).command(backends)
    assert pod_args[0] == "tritonserver"

    def flags(args: list[str], name: str) -> list[str]:
        return [a for a in args if a.startswith(f"--{name}=")]

    for name in ("model-control-mode", "load-model", "http-port", "grpc-port", "metrics-port"):
        assert flags(pod_args, name) == flags(serve_args, name), name
    assert flags(pod_args, "load-model") == ["--load-model=ens", "--load-model=m"]
    assert flags(serve_args, "strict-readiness") == ["--strict-readiness=false"]
    assert flags(pod_args, "strict-readiness") == ["--strict-readiness=true"]
    assert flags(pod_args, "exit-on-error") == ["--exit-on-error=true"]
    # The ports `dlkit serve` defaults to, on the pod and the Service.
    from toolkit.commands.serve import serve

    defaults = {p.name: p.default for p in serve.params}
    assert {k: defaults[f"{k}_port"] for k in DEFAULT_PORTS} == DEFAULT_PORTS
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == DEFAULT_PORTS
    assert {p["name"]: p["port"] for p in kinds["Service"]["spec"]["ports"]} == DEFAULT_PORTS
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe")}
    assert all(p == {"path": READY_PATH, "port": "http"} for p in probes.values())
    assert container["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": "http"}
    grace = kinds["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    [_, sleep] = container["lifecycle"]["preStop"]["exec"]["command"]
    assert grace > int(sleep) + int(flags(pod_args, "exit-timeout-secs")[0].split("=")[1])


def test_hpa_reads_the_metric_the_adapter_rule_produces(dlkit, tmp_path):
    out = tmp_path / "k8s"
    dlkit("k8s", "--repo", make_repo(tmp_path), "--out", out, "--min-replicas", "2")
    docs = read_folder(out)
    hpa = by_kind(docs)["HorizontalPodAutoscaler"]
    [rule] = docs[ADAPTER_VALUES]["rules"]["custom"]
    pods_metric, cpu = hpa["spec"]["metrics"]
    assert pods_metric["pods"]["metric"]["name"] == rule["name"]["as"] == metrics.HPA_METRIC
    assert pods_metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "10000"}
    assert cpu["resource"]["name"] == "cpu"
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind(docs)["Deployment"]["metadata"]["name"]
    # The rule reads only Triton's series, in any namespace, per pod, weighted by requests.
    used = set(re.findall(r"nv_\w+", rule["seriesQuery"] + rule["metricsQuery"]))
    assert used == set(metrics.SERIES)
    assert re.fullmatch(rf"\^{metrics.QUEUE_SERIES}\$", rule["name"]["matches"])
    assert rule["seriesQuery"] == f'{metrics.QUEUE_SERIES}{{namespace!="",pod!=""}}'
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["metricsQuery"].count("sum by (<<.GroupBy>>)") == 2
    readme = (out / "README.md").read_text()
    assert f"pods/*/{metrics.HPA_METRIC}" in readme and "kubectl get hpa triton -w" in readme
    assert "kubectl apply -k" in readme and "not been applied to a cluster" in readme


@pytest.mark.parametrize("store", ["pvc:triton-models", "s3://bucket/triton"])
def test_kserve_inference_service(dlkit, tmp_path, store):
    out = tmp_path / "k8s"
    args = ["--repo", make_repo(tmp_path), "--out", out, "--model-store", store, "--gpus", "1"]
    dlkit("k8s", *args, "--kserve", "--max-replicas", "3")
    kinds = by_kind(read_folder(out))
    isvc = kinds.pop("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["runtimeVersion"] == f"{TRITON_RELEASE}-py3"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    if store.startswith("pvc:"):
        assert model["storageUri"] == "pvc://triton-models"
        assert set(kinds) == {"Kustomization"}
    else:
        assert model["storageUri"] == store
        account = kinds.pop("ServiceAccount")
        kubernetes_validate.validate(account, VALIDATED_KUBERNETES, strict=True)
        assert predictor["serviceAccountName"] == account["metadata"]["name"]
        assert account["secrets"] == [{"name": "triton-model-store"}]
    assert not (out / ADAPTER_VALUES).exists() and set(kinds) == {"Kustomization"}
    assert "ensemble and its steps are always in the same pod" in (out / "README.md").read_text()


def test_json_prints_one_object_naming_what_was_written(dlkit, tmp_path):
    out = tmp_path / "k8s"
    result = dlkit.json("k8s", "--repo", make_repo(tmp_path), "--out", out)
    assert result == {
        "out": str(out),
        "files": sorted(p.name for p in out.iterdir()),
        "models": ["ens", "m"],
        "store": "image",
        "kserve": False,
        "image": "dlkit-triton:latest",
        "namespace": None,
        "metric": metrics.HPA_METRIC,
        "python_backend_models": {"m": "whatever its model.py imports"},
        "warnings": [],  # the Dockerfile's image has the python backend's packages
    }
    assert "kustomization.yaml" in result["files"] and "README.md" in result["files"]


def test_force_replaces_the_folder_whole_and_a_refusal_leaves_it(dlkit, tmp_path):
    repo, out = make_repo(tmp_path), tmp_path / "k8s"
    dlkit("k8s", "--repo", repo, "--out", out)
    (out / "stale.yaml").write_text("old: true\n")
    before = {p.name: p.read_text() for p in out.iterdir()}
    result = dlkit("k8s", "--repo", repo, "--out", out, expect=1)
    assert result.output == f"Error: {out} exists and is not empty; pass --force to replace it\n"
    result = dlkit("k8s", "--repo", repo, "--out", out, "--force", "--replicas", "0", expect=1)
    assert result.output == "Error: --replicas must be from 1 to 10000 (got 0)\n"
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    dlkit("k8s", "--repo", repo, "--out", out, "--force", "--namespace", "serving")
    assert not (out / "stale.yaml").exists()
    assert read_folder(out)["kustomization.yaml"]["namespace"] == "serving"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k8s", "repo"]  # nothing left aside


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "0"], "--replicas must be from 1 to 10000 (got 0)"),
        (["--max-replicas", "0"], "--max-replicas must be from 1 to 10000 (got 0)"),
        (
            ["--min-replicas", "5", "--max-replicas", "2"],
            "--min-replicas 5 is more than --max-replicas 2",
        ),
        (["--replicas", "6", "--max-replicas", "4"], "--replicas 6 is more than --max-replicas 4"),
        (["--replicas", "1", "--min-replicas", "2"], "--replicas 1 is less than --min-replicas 2"),
        (["--gpus", "-1"], "--gpus must be from 0 to 64 (got -1)"),
        (
            ["--model-store", "nfs://server/models"],
            "unknown --model-store 'nfs://server/models': use image, pvc:NAME, "
            "s3://BUCKET/PATH or gs://BUCKET/PATH",
        ),
        (["--model-store", "s3://"], "--model-store s3:// names no bucket; use s3://BUCKET/PATH"),
        (
            ["--kserve"],
            "--kserve needs the repository where KServe can fetch it: use --model-store "
            "pvc:NAME, s3://BUCKET/PATH or gs://BUCKET/PATH",
        ),
        (
            ["--kserve", "--model-store", "pvc:m", "--image", "mine:1"],
            "--image does not apply with --kserve: KServe's Triton runtime runs "
            f"{TRITON_IMAGE} (its runtimeVersion)",
        ),
        (["--cpu", "lots"], "--cpu 'lots' is not a Kubernetes quantity (e.g. 500m or 2)"),
        (
            ["--namespace", "Serving_NS"],
            "--namespace 'Serving_NS' is not a valid namespace: lower-case letters, digits and "
            "'-', at most 63 characters",
        ),
    ],
)
def test_bad_options_are_one_error_line(dlkit, tmp_path, args, message):
    out = tmp_path / "k8s"
    result = dlkit("k8s", "--repo", make_repo(tmp_path), "--out", out, *args, expect=1)
    assert result.output == f"Error: {message}\n"
    assert not out.exists()


def test_unusable_repositories_are_one_error_line(dlkit, tmp_path):
    out = tmp_path / "k8s"
    missing = tmp_path / "missing"
    result = dlkit("k8s", "--repo", missing, "--out", out, expect=1)
    assert (
        result.output
        == f"Error: no model repository at {missing}; write one with `dlkit package`\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = dlkit("k8s", "--repo", empty, "--out", out, expect=1)
    assert result.output == f"Error: no models in {empty}; write them with `dlkit package`\n"
    repo = make_repo(tmp_path / "broken", steps=("m", "resize"))
    result = dlkit("k8s", "--repo", repo, "--out", out, expect=1)
    assert result.output == (
        f"Error: ensemble ens uses resize, which is not in {repo}; package it there too (an "
        "ensemble's models are served by the same pod)\n"
    )
    assert not out.exists()


# ------------------------------------------------------------------------- a real tritonserver


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the pip-installed tritonserver is Linux-only"
)
def test_a_real_tritonserver_exports_the_series_the_adapter_rule_reads(dlkit, tiny_run, tmp_path):
    import dataclasses

    import numpy as np

    from toolkit.triton.client import TritonClient
    from toolkit.triton.repository import PackageOptions, package_artifact

    [onnx] = dlkit.json("export", tiny_run["best_checkpoint"], "--onnx", "--out", tmp_path)[
        "artifacts"
    ]
    repo, out = tmp_path / "model_repository", tmp_path / "k8s"
    options = dataclasses.replace(PackageOptions(backend="python"), preprocess=True)
    package_artifact(onnx["path"], repo, "tiny", options=options)
    written = dlkit.json("k8s", "--repo", repo, "--out", out)
    ports = {f"{kind}_port": free_port() for kind in DEFAULT_PORTS}
    with TritonServer(repo, **ports).start(300) as server:
        # The pod loads what `dlkit serve` loads here: every model, the ensemble with its steps.
        assert sorted(server.plan.load) == written["models"]
        base = f"http://{server.http_url}"
        for path in (READY_PATH, LIVE_PATH):
            with urllib.request.urlopen(base + path, timeout=5) as response:
                assert response.status == 200
        with urllib.request.urlopen(f"{base}/v2", timeout=5) as response:
            assert json.load(response)["version"] == TRITON_SERVER_VERSION
        before = scrape(server.metrics_url)
        with TritonClient(server.grpc_url) as client:
            for _ in range(3):
                client.infer("tiny", np.zeros((2, 1, 16, 16), np.float32))
        after = scrape(server.metrics_url)
    assert set(after) == set(before) == set(metrics.SERIES)
    assert after[metrics.REQUESTS_SERIES] - before[metrics.REQUESTS_SERIES] == 3
    assert after[metrics.QUEUE_SERIES] >= before[metrics.QUEUE_SERIES]


def scrape(url: str, model: str = "tiny") -> dict[str, float]:
    """The value of each series the adapter rule reads, for `model`, from Triton's /metrics."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for series in metrics.SERIES:
        match = re.search(rf'^{series}{{model="{model}",version="1"}} (\S+)$', text, re.M)
        if match:
            found[series] = float(match.group(1))
    return found
