"""Which models of a repository a server can load, and why each of the others is skipped.

One bad model must not stop the rest: a config.pbtxt that does not parse, a version folder
Triton cannot use (half-written, or numbered beyond the int64 that tritonserver aborts on), a
backend the server lacks, or an ensemble with a step that cannot be served is named, skipped,
and the other models are served.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.errors import DlkitError
from toolkit.triton.configs import CONFIG_FILE, MAX_INSTANCES, parameter, read_config
from toolkit.triton.versions import existing_versions, policy_versions

# Which backend serves each `platform` of a config.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
# The file each kind of model loads from a version folder when the config names none.
DEFAULT_MODEL_FILES = {
    "python": "model.py",
    "onnxruntime_onnx": "model.onnx",
    "onnxruntime": "model.onnx",
    "pytorch_libtorch": "model.pt",
    "pytorch": "model.pt",
    "tensorrt_plan": "model.plan",
    "tensorrt": "model.plan",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
    "openvino": "model.xml",
}
MAX_TRITON_VERSION = 2**63 - 1
_LEADING_DIGITS = re.compile(r"[0-9]+")


@dataclass
class RepositoryPlan:
    """Which models of a repository this server can load, and why the others are skipped."""

    load: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)  # model -> backend


def plan_repository(
    repo: str | os.PathLike, backends: set[str], only: list[str] | None = None
) -> RepositoryPlan:
    """Sort the models in `repo` (all, or `only`) into those `backends` can serve and those
    they cannot, with the reason."""
    repo = Path(repo)
    if not repo.is_dir():
        raise DlkitError(f"no model repository at {repo}; write one with `dlkit package`")
    plan, steps = RepositoryPlan(), {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = model_dir.name
        try:
            config = read_config(model_dir / CONFIG_FILE)
        except DlkitError as exc:
            missing = not (model_dir / CONFIG_FILE).is_file()
            plan.skipped[name] = f"no {CONFIG_FILE}" if missing else str(exc)
            continue
        backend = config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)
        plan.backends[name] = backend
        steps[name] = [s.model_name for s in config.ensemble_scheduling.step]
        problem = model_problem(model_dir, config)
        if problem:
            plan.skipped[name] = problem
        elif backend not in backends:
            plan.skipped[name] = (
                f"this tritonserver has no {backend} backend (it has "
                f"{', '.join(sorted(backends - {'ensemble'}))}); package it with "
                "`--backend python`, or serve it in the NGC image (Dockerfile)"
            )
    # An ensemble is servable only when all its steps are (repeat: ensembles may nest).
    changed = True
    while changed:
        changed = False
        for name, needed in steps.items():
            missing = [m for m in needed if m not in steps or m in plan.skipped]
            if missing and name not in plan.skipped:
                plan.skipped[name] = f"its step model {missing[0]} cannot be served"
                changed = True
    known = set(plan.backends) | set(plan.skipped)
    unknown = sorted(set(only or []) - known)
    if unknown:
        raise DlkitError(f"no model {unknown[0]} in {repo}; it holds {sorted(known)}")
    plan.load = [n for n in plan.backends if n not in plan.skipped and (not only or n in set(only))]
    return plan


def model_problem(model_dir: Path, config: mc.ModelConfig) -> str:
    """Why Triton could not load the model in `model_dir` as `config` describes it, or ""."""
    if config.name and config.name != model_dir.name:
        return f"its {CONFIG_FILE} names it {config.name!r}; Triton needs the folder's name"
    instances = sum(g.count for g in config.instance_group)
    if instances > MAX_INSTANCES:
        return f"it asks for {instances} instances; dlkit serves at most {MAX_INSTANCES}"
    for folder in model_dir.iterdir():
        digits = _LEADING_DIGITS.match(folder.name)
        if folder.is_dir() and digits and int(digits.group()) > MAX_TRITON_VERSION:
            return (
                f"version folder {folder.name[:30]} is beyond what Triton can number (it would "
                "stop the server); remove or rename it"
            )
    if config.platform == "ensemble":
        return ""
    versions = existing_versions(model_dir)
    if not versions:
        return "no numbered version folder"
    loaded = policy_versions(config, versions)
    if not loaded:
        return f"its version_policy picks none of its versions ({versions})"
    kind = config.platform or config.backend
    # The backend's file, and the artifact dlkit's python-backend classifier loads.
    needed = [
        config.default_model_filename or DEFAULT_MODEL_FILES.get(kind, ""),
        parameter(config, "artifact_file"),
    ]
    for version in loaded:
        for file in filter(None, needed):
            if not (model_dir / str(version) / file).exists():
                return (
                    f"version {version} has no {file} (half-written?); remove "
                    f"{model_dir / str(version)} or package it again"
                )
    return ""
