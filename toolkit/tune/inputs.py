"""What `dlkit tune` tunes: verified artifacts, the variants of a deploy run, or a model
already in a repository; and the private repository the tuning server serves them from.

Every candidate is staged into a scratch repository (hard links where possible), so the
user's repository is only read until the chosen config is written at the very end.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import detect_format, plugin, read_info
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.choices import Backend
from toolkit.errors import DlkitError
from toolkit.files import link_tree
from toolkit.triton.configs import (
    CONFIG_FILE,
    LABELS_FILE,
    model_file_names,
    parameter,
    read_config,
)
from toolkit.triton.plan import PLATFORM_BACKENDS
from toolkit.triton.repository import (
    PackageOptions,
    check_name,
    default_name,
    existing_versions,
    package_artifact,
)
from toolkit.triton.server import ServerBinary


@dataclass
class Candidate:
    """One variant to serve: its name, its artifact file, and (once staged) its model name
    in the scratch repository and the config it was packaged with."""

    variant: str
    artifact: Path
    info: ArtifactInfo
    backend: Backend | None = None  # None: whatever the server can serve
    model: str = ""
    base: mc.ModelConfig = field(default_factory=mc.ModelConfig)


def from_artifacts(paths: list[str | os.PathLike]) -> list[Candidate]:
    """Artifacts given on the command line, or the variants of deploy run folders."""
    candidates: list[Candidate] = []
    for path in map(Path, paths):
        if path.is_dir():
            candidates += from_run_folder(path)
            continue
        fmt = plugin(detect_format(path))
        if fmt.triton is None:
            raise DlkitError(
                f"{path} is a {fmt.name}; Triton serves exported models. Run `dlkit export "
                f"{path}` and tune what it writes"
            )
        candidates.append(Candidate(default_name(path), path, read_info(path)))
    names = [c.variant for c in candidates]
    for i, c in enumerate(candidates):
        if names.count(c.variant) > 1:
            c.variant = f"{c.variant}_{i}"
    return candidates


def model_name(paths: list[str | os.PathLike], candidates: list[Candidate]) -> str:
    """The name to write the tuned model under when none is given: the deploy run's model
    name for a run folder, else the first artifact's file stem."""
    first = Path(paths[0])
    if first.is_dir():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return str(json.loads((first / "report.json").read_text())["config"]["name"])
    return default_name(candidates[0].artifact)


def from_run_folder(folder: Path) -> list[Candidate]:
    """The variants of a `dlkit deploy` run that passed every gate and Triton can serve, the
    selected one first."""
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text())
        rows, selected = report["variants"], (report.get("selected") or {}).get("name")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DlkitError(
            f"{folder} is not a deploy run folder (no readable {path.name}: {exc})"
        ) from None
    passed = [r for r in rows if r.get("gate") == "passed" and r.get("servable") and r.get("path")]
    passed.sort(key=lambda r: r["name"] != selected)
    if not passed:
        raise DlkitError(f"no variant of the deploy run in {folder} passed its gates")
    return [Candidate(r["name"], Path(r["path"]), read_info(r["path"])) for r in passed]


def from_repository(repo: str | os.PathLike, name: str) -> Candidate:
    """Model `name` of a repository: the file of its newest version, served as it is now."""
    repo = Path(repo)
    check_name(name)
    if not repo.is_dir():
        raise DlkitError(f"no model repository at {repo}; write one with `dlkit package`")
    model_dir = repo / name
    versions = existing_versions(model_dir)
    if not (model_dir / CONFIG_FILE).is_file() or not versions:
        held = sorted(p.name for p in repo.iterdir() if (p / CONFIG_FILE).is_file())
        raise DlkitError(f"no model {name!r} in {repo}; it holds {held or 'no models'}")
    config = read_config(model_dir / CONFIG_FILE)
    folder = model_dir / str(versions[-1])
    named = config.default_model_filename or parameter(config, "artifact_file")
    known = model_file_names()
    files = [folder / f for f in ([named] if named else known) if (folder / f).is_file()]
    if not files:
        raise DlkitError(f"{folder} holds no model file that dlkit packaged")
    backend = Backend.PYTHON if config.backend == "python" else Backend.NATIVE
    return Candidate(name, files[0], read_info(files[0]), backend, name, config)


def stage(candidates: list[Candidate], scratch: Path, binary: ServerBinary, repo=None) -> None:
    """Put every candidate into the scratch repository: a model from `repo` is linked in as
    it is (its newest version), an artifact is packaged with the default serving options,
    for the native backend where this server has it, else the python backend."""
    for i, candidate in enumerate(candidates):
        if candidate.model:  # already in a repository: link its newest version
            backend = candidate.base.backend or PLATFORM_BACKENDS.get(candidate.base.platform)
            if backend not in binary.backends():
                raise DlkitError(
                    f"this tritonserver has no {backend} backend to serve {candidate.model}; "
                    "tune it where it is served (the NGC image), or package it with "
                    "`--backend python`"
                )
            source = Path(repo) / candidate.model
            target = scratch / candidate.model
            target.mkdir(parents=True)
            for extra in (CONFIG_FILE, LABELS_FILE):
                if (source / extra).is_file():
                    (target / extra).write_bytes((source / extra).read_bytes())
            version = candidate.artifact.parent.name
            link_tree(source / version, target / version)
            continue
        fmt = plugin(detect_format(candidate.artifact))
        native = fmt.triton.server_backend in binary.backends()
        candidate.backend = Backend.NATIVE if native else Backend.PYTHON
        candidate.model = f"t{i}_{candidate.variant}"[:100]
        options = PackageOptions(backend=candidate.backend)
        package_artifact(candidate.artifact, scratch, candidate.model, 1, options)
        candidate.base = read_config(scratch / candidate.model / CONFIG_FILE)
