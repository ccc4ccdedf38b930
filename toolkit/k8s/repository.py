"""The model repository as a pod will load it: every model, each ensemble complete."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import DlkitError
from toolkit.triton.configs import CONFIG_FILE, parameter, read_config
from toolkit.triton.repository import existing_versions

# What the model.py of a python-backend model dlkit wrote imports, by the artifact it runs;
# NGC's plain Triton image has the python backend but none of these.
PYTHON_IMPORTS = {"onnx": "onnxruntime", "torchscript": "torch"}


def served_models(repo: str | os.PathLike) -> list[str]:
    """Names of every model in `repo`, sorted; all of them are served by the same pod.

    Raises DlkitError when the repository is missing or empty, a model folder has no config or
    no version, or an ensemble uses a model that is not in the repository (an ensemble's steps
    must be in the same pod: Triton runs them in-process).
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise DlkitError(f"no model repository at {repo}; write one with `dlkit package`")
    folders = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DlkitError(f"no models in {repo}; write them with `dlkit package`")
    steps: dict[str, list[str]] = {}
    for folder in folders:
        if not (folder / CONFIG_FILE).is_file():
            raise DlkitError(
                f"{folder} has no {CONFIG_FILE}; remove it or package it with `dlkit package`"
            )
        config = read_config(folder / CONFIG_FILE)
        steps[folder.name] = [s.model_name for s in config.ensemble_scheduling.step]
        if config.platform != "ensemble" and not existing_versions(folder):
            raise DlkitError(f"{folder} has no numbered version folder")
    for name, needed in steps.items():
        missing = sorted(set(needed) - set(steps))
        if missing:
            raise DlkitError(
                f"ensemble {name} uses {missing[0]}, which is not in {repo}; package it there "
                "too (an ensemble's models are served by the same pod)"
            )
    return list(steps)


def python_backend_models(repo: str | os.PathLike) -> dict[str, str]:
    """The models of `repo` that run on Triton's python backend, each with what its model.py
    needs beyond Triton's own image: `onnxruntime` or `torch` for a classifier dlkit packaged
    with `--backend python`, `dlkit` for its `--preprocess` model, and for a model.py dlkit
    did not write, whatever it imports."""
    found = {}
    for folder in sorted(p for p in Path(repo).iterdir() if (p / CONFIG_FILE).is_file()):
        config = read_config(folder / CONFIG_FILE)
        if config.backend != "python":
            continue
        artifact = parameter(config, "artifact_format")
        if artifact:
            found[folder.name] = PYTHON_IMPORTS.get(artifact, artifact)
        elif "dlkit" in config.parameters:
            found[folder.name] = "dlkit"
        else:
            found[folder.name] = "whatever its model.py imports"
    return found
