"""A Triton model repository from dlkit artifacts (`dlkit package`).

A new version is written into a temporary folder and renamed into place, so a running server
never sees half a version, and existing versions are never touched.

Layout for an artifact packaged as NAME (with `--preprocess`):

    NAME/config.pbtxt, NAME/labels.txt, NAME/<version>/model.onnx|model.pt[, model.py]
    NAME_preprocess/   python backend: encoded image bytes -> the artifact's input tensor
    NAME_ensemble/     NAME_preprocess then NAME: image files in, logits (and top-k labels) out
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import detect_format, read_info
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.torchscript import check_code
from toolkit.choices import Backend, Format
from toolkit.errors import DlkitError
from toolkit.files import atomic_path, write_text
from toolkit.triton.configs import (
    CONFIG_FILE,
    DEFAULT_MAX_BATCH_SIZE,
    LABELS_FILE,
    MODEL_FILES,
    ServingOptions,
    classifier_config,
    config_info,
    ensemble_config,
    io_tensors,
    preprocess_config,
    read_config,
    write_config,
)

BACKEND_SOURCES = Path(__file__).parent / "backend"
MAX_VERSION = 2**31 - 1  # Triton parses version folders as int64; keep well inside
MAX_NAME = 128


@dataclass(frozen=True)
class PackageOptions:
    """How `package_artifact` writes an artifact: the backend, the serving options, and
    whether to add the image-preprocessing ensemble. `trust` skips the TorchScript code
    check (Triton will run the file)."""

    backend: Backend = Backend.NATIVE
    serving: ServingOptions = field(default_factory=ServingOptions)
    preprocess: bool = False
    trust: bool = False


@dataclass
class PackageResult:
    """What `package_artifact` wrote: the models (classifier first) and the new version."""

    artifact: str
    model: str
    version: int
    backend: str
    platform: str
    max_batch_size: int
    models: list[str]
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_name(artifact: str | os.PathLike) -> str:
    """`runs/digits/best.onnx` -> `best`; `best.torchscript.pt` -> `best`."""
    name = Path(artifact).name.removesuffix(".torchscript.pt").removesuffix(".onnx")
    name = name.removesuffix(".pt")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:MAX_NAME] or "model"


def check_name(name: str) -> None:
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise DlkitError(
            f"model name {name[:40]!r} must be letters, digits, '_', '-' or '.', at most "
            f"{MAX_NAME} characters, starting with a letter or digit"
        )


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _signature(c: mc.ModelConfig) -> tuple:
    return (
        c.platform,
        c.backend,
        c.max_batch_size,
        [text_format.MessageToString(t) for t in (*c.input, *c.output)],
    )


def _check_compatible(model_dir: Path, new: mc.ModelConfig, info: ArtifactInfo) -> None:
    """A new version must fit the model's existing config: one config serves all versions."""
    old = read_config(model_dir / CONFIG_FILE)
    old_info = config_info(old)
    same_info = old_info is not None and (
        old_info.classes == info.classes and old_info.preprocessing == info.preprocessing
    )
    if _signature(old) != _signature(new) or not same_info:
        raise DlkitError(
            f"model {new.name} in {model_dir.parent} has versions with a different format, "
            "inputs, outputs, classes or preprocessing; package this artifact under another "
            "--name, or remove that model folder first"
        )


def _write_model(
    repo: Path,
    config: mc.ModelConfig,
    version: int,
    files: dict[str, Path],
    info: ArtifactInfo,
    labels: bool = True,
) -> None:
    """Write `repo/<name>/<version>/` (files copied in) atomically, then config and labels.

    A model that does not exist yet is assembled in a hidden folder and renamed as a whole.
    """
    model_dir = repo / config.name
    if (model_dir / str(version)).exists():
        raise DlkitError(f"{model_dir / str(version)} already exists; choose another --version")
    if (model_dir / CONFIG_FILE).is_file():
        _check_compatible(model_dir, config, info)

    def fill(version_dir: Path) -> None:
        version_dir.mkdir(parents=True)
        for target, source in files.items():
            shutil.copyfile(source, version_dir / target)

    def finish(folder: Path) -> None:
        if labels:
            write_text(folder / LABELS_FILE, "".join(f"{c}\n" for c in info.classes))
        write_config(config, folder / CONFIG_FILE)

    if model_dir.is_dir():
        with atomic_path(model_dir / str(version)) as tmp:
            fill(tmp)
        finish(model_dir)
    else:
        with atomic_path(model_dir) as tmp:
            fill(tmp / str(version))
            finish(tmp)


def package_artifact(
    artifact: str | os.PathLike,
    repo: str | os.PathLike = "model_repository",
    name: str | None = None,
    version: int | None = None,
    options: PackageOptions | None = None,
) -> PackageResult:
    """Add `artifact` (dlkit ONNX or TorchScript) to the model repository `repo` as a new
    version of model `name` (default: the artifact's file stem); returns what was written.

    Raises DlkitError for a checkpoint (export it first), an existing version, a model whose
    existing config does not fit, or options that contradict the artifact.
    """
    options = options or PackageOptions()
    backend = Backend.parse(options.backend, "backend")
    path, repo = Path(artifact), Path(repo)
    fmt = detect_format(path)
    if fmt not in MODEL_FILES:
        raise DlkitError(
            f"{path} is a {fmt}; Triton serves exported models. Run "
            f"`dlkit export {path}` and package the .onnx or .torchscript.pt"
        )
    info = read_info(path)
    if fmt == Format.TORCHSCRIPT:
        check_code(path, options.trust)  # Triton will run this file
    name = name or default_name(path)
    check_name(name)
    tensors = io_tensors(path, fmt, info, backend)
    serving = options.serving
    max_batch_size = _max_batch_size(path, tensors, info, options)
    if version is None:
        version = max(existing_versions(repo / name), default=0) + 1
    if not 1 <= version <= MAX_VERSION:
        raise DlkitError(f"--version must be a whole number from 1 to {MAX_VERSION}")

    config = classifier_config(name, fmt, info, tensors, backend, serving, max_batch_size)
    files = {MODEL_FILES[fmt]: path}
    if backend == Backend.PYTHON:
        files["model.py"] = BACKEND_SOURCES / "classifier.py"
    _write_model(repo, config, version, files, info)
    models = [name]
    if options.preprocess:
        models += _add_preprocessing(repo, config, tensors[0], info, serving)
    return PackageResult(
        artifact=str(path),
        model=name,
        version=version,
        backend=str(backend),
        platform=config.platform or config.backend,
        max_batch_size=max_batch_size,
        models=models,
        path=str(repo / name / str(version)),
    )


def _max_batch_size(path: Path, tensors, info: ArtifactInfo, options: PackageOptions) -> int:
    """The model's max_batch_size: the option, or the default for its batch dimension."""
    static = tensors[0].dims != info.preprocessing.input_shape
    max_batch_size = options.serving.max_batch_size
    if max_batch_size is None:
        max_batch_size = 0 if static else DEFAULT_MAX_BATCH_SIZE
    if static and max_batch_size > 0:
        raise DlkitError(
            f"{path} has a fixed batch size, so Triton cannot batch it: use --max-batch-size 0 "
            "(or export with a dynamic batch)"
        )
    if options.preprocess and static:
        raise DlkitError("--preprocess needs an artifact with a dynamic batch dimension")
    return max_batch_size


def _add_preprocessing(repo: Path, classifier, tensor, info, serving) -> list[str]:
    """NAME_preprocess and NAME_ensemble: stateless given their config, so version 1 is
    written once and kept afterwards."""
    name = classifier.name
    pre = preprocess_config(f"{name}_preprocess", info, tensor, serving, classifier.max_batch_size)
    ens = ensemble_config(f"{name}_ensemble", classifier, pre, info)
    for model, extra, labels in (
        (pre, {"model.py": BACKEND_SOURCES / "preprocess.py"}, False),
        (ens, {}, True),
    ):
        if not existing_versions(repo / model.name):
            _write_model(repo, model, 1, extra, info, labels=labels)
        else:
            _check_compatible(repo / model.name, model, info)
    return [pre.name, ens.name]


def package_artifacts(
    artifacts: list[str | os.PathLike],
    repo: str | os.PathLike = "model_repository",
    name: str | None = None,
    version: int | None = None,
    options: PackageOptions | None = None,
) -> list[PackageResult]:
    """Package several artifacts. Names default to the file stems; when two stems collide
    (`best.onnx`, `best.torchscript.pt`) each gets its format as a suffix."""
    if name and len(artifacts) > 1:
        raise DlkitError("--name names one model; package several artifacts without --name")
    names = [name or default_name(a) for a in artifacts]
    if len(set(names)) < len(names):
        names = [f"{n}_{detect_format(a)}" for n, a in zip(names, artifacts, strict=True)]
    return [
        package_artifact(a, repo, n, version, options)
        for a, n in zip(artifacts, names, strict=True)
    ]
