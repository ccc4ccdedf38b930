"""Deploy's last stages: package the selected variant (and the fp32 ONNX fallback) for
Triton, then serve the repository on a real tritonserver and check its answers.

tritonclient is a required dependency, but `benchmarks/gpu_check.sh` runs dlkit from the
source tree on a machine that has none: `toolkit.triton` is imported inside these functions,
after `triton_missing` said it is there.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from toolkit.artifacts import plugin
from toolkit.choices import Backend
from toolkit.deploy.report import DeployReport
from toolkit.deploy.selection import VariantReport
from toolkit.deploy.stages import smoke_check
from toolkit.errors import DlkitError
from toolkit.files import rehearse
from toolkit.log import logger


def triton_missing() -> str:
    """Why this machine cannot package for Triton, or "" when it can (tritonclient writes
    and reads the configs)."""
    try:
        importlib.import_module("tritonclient.grpc.model_config_pb2")
    except ImportError as exc:
        return f"tritonclient cannot be imported here ({exc}): pip install tritonclient[grpc,http]"
    return ""


def _backend(variant: VariantReport) -> tuple[Backend, str]:
    """native where the server has the format's own backend (the NGC image has onnxruntime,
    pytorch and openvino), python for the pip-installed server (its only backend); and why.
    With no tritonserver here, native (what the NGC image serves), said in a warning: nothing
    here can serve it."""
    from toolkit.triton.server import find_tritonserver

    native = plugin(variant.format).triton
    try:
        binary = find_tritonserver()
    except DlkitError as exc:
        why = (
            f"no tritonserver here ({exc}); packaged for Triton's native backends, as the "
            "NGC image serves them"
        )
        logger.warning("warning: %s", why)
        return Backend.NATIVE, why
    if native is not None and native.server_backend in binary.backends():
        return Backend.NATIVE, f"{binary.path} has the {native.server_backend} backend"
    return Backend.PYTHON, f"{binary.path} has no {variant.format} backend: the python one"


def _serving(model_dir: Path):
    """The serving options of the model in `model_dir`, or the defaults for a new one."""
    from toolkit.triton.configs import CONFIG_FILE, ServingOptions, read_config, serving_options

    config = model_dir / CONFIG_FILE
    return serving_options(read_config(config)) if config.is_file() else ServingOptions()


def package_stage(
    config, selected: VariantReport, fallback: VariantReport, report: DeployReport
) -> list[dict[str, Any]]:
    """Package the selected variant and the fp32 ONNX fallback, first into a copy of the
    repository; only when that works is the real one touched.

    A model that exists gets a new version served as it is now (a `dlkit package
    --replace-config` or a tuning keeps its options); one whose versions have another format
    or backend is refused, naming the --name to use instead (one config serves them all)."""
    from toolkit.triton.repository import PackageOptions, package_artifact

    chosen = Backend.parse(config.backend, "backend") if config.backend else None
    models = [(selected, config.name)]
    if fallback is not selected:
        models.append((fallback, f"{config.name}_fallback"))

    def package_into(target: Path) -> list[dict[str, Any]]:
        written = []
        for variant, name in models:
            backend, why = (chosen, "--backend") if chosen else _backend(variant)
            options = PackageOptions(
                backend=backend,
                serving=_serving(target / name),
                preprocess=config.preprocess and name == config.name,
            )
            result = package_artifact(variant.path, target, name, options=options)
            if target == Path(config.repo):
                report.repository_changed = True
            written.append(result.to_dict() | {"variant": variant.name, "backend_reason": why})
        return written

    rehearse(Path(config.repo), package_into)
    return package_into(Path(config.repo))


def smoke_test_stage(
    config, selected: VariantReport, report: DeployReport
) -> dict[str, Any] | None:
    """Serve the repository, check the served model against the local runner on validation
    images, then stop (or, with --serve, keep serving until Ctrl-C or SIGTERM). A model the
    tritonserver here cannot serve (`--backend native` on the pip-installed server) skips
    the check, saying why (None)."""
    from toolkit.triton.server import TritonServer, free_port, serve_until_signal, unservable_here

    models = next(p["models"] for p in report.packaged if p["model"] == config.name)
    unservable = unservable_here(config.repo, models)
    if unservable:
        why = "; ".join(f"{model}: {reason}" for model, reason in unservable.items())
        if config.serve:
            raise DlkitError(f"cannot serve here: {why}")
        report.skipped_stages["smoke test"] = f"the tritonserver here cannot serve it ({why})"
        logger.warning("skipped the smoke test: %s", report.skipped_stages["smoke test"])
        return None
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    if config.serve:
        ports = {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002}
    server = TritonServer(config.repo, models=models, **ports)
    server.start()
    try:
        endpoint = f"grpc://{server.grpc_url}/{config.name}"
        result = smoke_check(selected.path, endpoint, selected.precision)
        result["http"] = f"http://{server.http_url}"
        if config.serve:
            report.smoke_test = result
            logger.info("serving %s (HTTP %s); Ctrl-C stops", endpoint, result["http"])
            serve_until_signal(server)
        return result
    finally:
        server.stop()
