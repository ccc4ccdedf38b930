"""A Triton model repository from dlkit artifacts (`dlkit package`).

A new version is written into a temporary folder and renamed into place, so a running server
never sees half a version, and existing versions are never touched. One `config.pbtxt` serves
every version of a model, so a new version must match it (format, backend, inputs, outputs,
classes, preprocessing) and may change its serving options only when asked to. Writers hold
the repository's lock file, so concurrent `dlkit package` runs take turns.

Layout for an artifact packaged as NAME (with `--preprocess`):

    NAME/config.pbtxt, NAME/labels.txt, NAME/<version>/ the artifact's files (model.onnx,
        model.pt, model.xml + model.bin, ...) [+ model.py and runner.py for the python backend]
    NAME_preprocess/   python backend: encoded image bytes -> the artifact's input tensor
    NAME_ensemble/     NAME_preprocess then NAME: image files in, logits (and top-k labels) out
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import detect_format, plugin, read_info
from toolkit.artifacts.contract import check_classifier
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.choices import Backend
from toolkit.errors import DlkitError
from toolkit.files import atomic_path, remove_leftovers, write_text
from toolkit.triton.configs import (
    CONFIG_FILE,
    DEFAULT_MAX_BATCH_SIZE,
    LABELS_FILE,
    ServingOptions,
    classifier_config,
    config_info,
    ensemble_config,
    parameter,
    preprocess_config,
    read_config,
    serving_options,
    write_config,
)
from toolkit.triton.rollback import all_or_nothing, check_inside, removed_if_left_empty
from toolkit.triton.version_files import BACKEND_SOURCES, version_files
from toolkit.triton.versions import existing_versions, recorded_config, served_versions

MAX_VERSION = 2**31 - 1  # Triton parses version folders as int64; keep well inside
MAX_NAME = 128
PREPROCESS_SUFFIX, ENSEMBLE_SUFFIX = "_preprocess", "_ensemble"
LOCK_FILE = ".dlkit-lock"  # in the repository's root; Triton only looks at folders
LOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class PackageOptions:
    """How `package_artifact` writes an artifact: the backend, the serving options, and
    whether to add the image-preprocessing ensemble. `trust` skips the TorchScript code
    check (Triton will run the file). `replace_config` lets a new version change the serving
    options of a model that exists, which changes how every version of it runs."""

    backend: Backend | None = Backend.NATIVE  # None: the existing model's, else native
    serving: ServingOptions = field(default_factory=ServingOptions)
    preprocess: bool = False
    trust: bool = False
    replace_config: bool = False


@dataclass
class PackageResult:
    """What `package_artifact` wrote: the models (classifier first) and the new version;
    `config_changes` names the serving changes made to an existing model's config."""

    artifact: str
    model: str
    version: int
    backend: str
    platform: str
    max_batch_size: int
    models: list[str]
    path: str
    config_changes: str = ""
    backend_from_model: bool = False  # no backend was asked for: the model's versions' one
    served_versions: list[int] = field(default_factory=list)  # what Triton loads, by policy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_name(artifact: str | os.PathLike) -> str:
    """`runs/digits/best.onnx` -> `best`; `best.torchscript.pt`, `best.openvino.xml` -> `best`."""
    name = plugin(detect_format(artifact)).stem(artifact)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:MAX_NAME] or "model"


def check_name(name: str, suffix: str = "") -> None:
    """A model name Triton and every file system accept (`suffix`: the longest one dlkit
    will add to it, for the models it derives)."""
    longest = MAX_NAME - len(suffix)
    if not _NAME.fullmatch(name) or len(name) > longest:
        raise DlkitError(
            f"model name {name[:40]!r} must be letters, digits, '_', '-' or '.', at most "
            f"{longest} characters, starting with a letter or digit"
        )


def _tensors(tensors) -> str:
    return ", ".join(
        f"{t.name} {mc.DataType.Name(t.data_type).removeprefix('TYPE_')} {list(t.dims)}"
        for t in tensors
    )


def _shared(config: mc.ModelConfig) -> dict[str, str]:
    """What every version of a model must agree on, since one config serves them all: how it
    is run, what it takes and answers, and what its answers mean."""
    info = config_info(config)
    return {
        "format": str(info.format) if info else "",
        "backend": config.platform or config.backend,
        "model file": config.default_model_filename or parameter(config, "artifact_file"),
        "inputs": _tensors(config.input),
        "outputs": _tensors(config.output),
        "classes": ", ".join(info.classes) if info else "",
        "preprocessing": json.dumps(asdict(info.preprocessing)) if info else "",
        "steps": ", ".join(s.model_name for s in config.ensemble_scheduling.step),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        text = str(value)
        return repr(text if len(text) <= 60 else text[:57] + "...")

    return "; ".join(
        f"{key} {short(old[key])} -> {short(new[key])}" for key in old if old[key] != new[key]
    )


def _check_compatible(model_dir: Path, new: mc.ModelConfig, replace: bool) -> str:
    """A new version must fit the model's config, since one config serves every version.

    Returns the serving changes `new` makes (empty: the config stays as it is); raises
    DlkitError when the versions would differ in what they are, or when the serving changes
    are not allowed by `replace`.
    """
    old = read_config(model_dir / CONFIG_FILE)
    shared = _shared(old), _shared(new)
    different = _differences(*shared)
    if different:
        raise DlkitError(
            f"model {new.name} in {model_dir.parent} cannot take this as a new version "
            f"({different}): one config.pbtxt serves every version of a model, so they must "
            "share format, backend, inputs, outputs, classes and preprocessing. "
            f"{_backend_hint(old, new)}Package it as another model "
            f"(--name {new.name}_{_flavour(*shared)}), or remove {model_dir} first"
        )
    changes = _differences(serving_options(old).to_dict(), serving_options(new).to_dict())
    if changes and not replace:
        raise DlkitError(
            f"model {new.name} in {model_dir.parent} is served with other options ({changes}); "
            "a new version would change how every version runs. Package with the options it "
            "has, or pass --replace-config to serve every version with the new ones"
        )
    return changes


def config_backend(config: mc.ModelConfig) -> Backend:
    """How a classifier's config runs it: the python backend, or a native one."""
    return Backend.PYTHON if config.backend == "python" else Backend.NATIVE


def _backend_hint(old: mc.ModelConfig, new: mc.ModelConfig) -> str:
    """When the backends differ: the option that packages with the model's."""
    wanted = config_backend(old)
    if wanted == config_backend(new):
        return ""
    return f"Its versions run on the {wanted} backend: package with --backend {wanted}, or "


def chosen_backend(asked: Backend | str | None, model_dir: Path) -> tuple[Backend, bool]:
    """The backend to package with: the one asked for, else that of the model's existing
    versions (True: taken from the model), else native."""
    if asked is not None:
        return Backend.parse(asked, "backend"), False
    config = model_dir / CONFIG_FILE
    if config.is_file():
        return config_backend(read_config(config)), True
    return Backend.NATIVE, False


def _flavour(old: dict[str, str], new: dict[str, str]) -> str:
    """A name suffix that tells the new model from the old: its format, else its backend."""
    if old["format"] != new["format"]:
        return new["format"] or "model"
    return "python" if new["backend"] == "python" else "native"


def _write_model(
    repo: Path,
    config: mc.ModelConfig,
    version: int,
    files: dict[str, Path | bytes],
    info: ArtifactInfo,
    labels: bool = True,
    replace: bool = False,
    versioned: bool = False,
) -> str:
    """Write `repo/<name>/<version>/` (files copied in) atomically; the config and labels
    only for a new model, or when `replace` allows the serving changes `config` makes
    (returned). A new model is assembled in a hidden folder and renamed as a whole.
    `versioned` (a classifier): the config also records what this version is (see
    `toolkit.triton.versions`), so it is rewritten with every version, serving as it was."""
    model_dir = repo / config.name
    if (model_dir / str(version)).exists():
        raise DlkitError(f"{model_dir / str(version)} already exists; choose another --version")
    has_config = (model_dir / CONFIG_FILE).is_file()
    changes = _check_compatible(model_dir, config, replace) if has_config else ""
    if versioned:
        config = recorded_config(model_dir, config, info, version, keep=not changes)

    def fill(version_dir: Path) -> None:
        version_dir.mkdir(parents=True)
        for target, source in files.items():
            if isinstance(source, bytes):
                (version_dir / target).write_bytes(source)
            else:
                shutil.copyfile(source, version_dir / target)

    def finish(folder: Path) -> None:
        if labels:
            write_text(folder / LABELS_FILE, "".join(f"{c}\n" for c in info.classes))
        write_config(config, folder / CONFIG_FILE)

    try:
        if model_dir.is_dir():
            with atomic_path(model_dir / str(version)) as tmp:
                fill(tmp)
            if changes or not has_config:
                finish(model_dir)
            elif versioned:  # the same serving config, recording the new version
                write_config(config, model_dir / CONFIG_FILE)
        else:
            with atomic_path(model_dir) as tmp:
                fill(tmp / str(version))
                finish(tmp)
    except OSError as exc:  # a full disk, a read-only folder: what was half-written is gone
        raise DlkitError(f"cannot write {model_dir / str(version)}: {exc.strerror or exc}") from exc
    return changes


@contextlib.contextmanager
def repository_lock(repo: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold `repo`'s lock file while versions are numbered and written, so concurrent
    `dlkit package` runs take turns (waiting up to `timeout` seconds). The kernel releases
    the lock of a process that dies."""
    try:
        repo.mkdir(parents=True, exist_ok=True)
        # Not through a symbolic link: a planted one would have dlkit create its target.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        handle = os.fdopen(os.open(repo / LOCK_FILE, flags, 0o644), "a")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DlkitError(
                f"{repo / LOCK_FILE} is a symbolic link; remove it (dlkit writes its lock there)"
            ) from None
        raise DlkitError(f"cannot write to the model repository {repo}: {exc.strerror}") from exc
    with handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DlkitError(
                        f"another dlkit process has been writing to {repo} for over "
                        f"{timeout:.0f} s ({LOCK_FILE} is locked); try again when it is done"
                    ) from None
                time.sleep(0.05)
        _remove_leftovers(repo)
        yield


def _remove_leftovers(repo: Path) -> None:
    """Remove the temporary folders and files (`.NAME.tmp-PID`, from `atomic_path`) that a
    writer killed mid-write left in the repository; only those of processes that are gone."""
    for folder in [repo, *(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        remove_leftovers(folder)


def package_artifact(
    artifact: str | os.PathLike,
    repo: str | os.PathLike = "model_repository",
    name: str | None = None,
    version: int | None = None,
    options: PackageOptions | None = None,
) -> PackageResult:
    """Add `artifact` (any dlkit artifact Triton serves: ONNX, TorchScript, OpenVINO IR, ...)
    to the model repository `repo` as a new version of model `name` (default: the artifact's
    file stem); returns what was written.

    Raises DlkitError for a checkpoint (export it first), an existing version, a model whose
    config the new version does not fit (or would change, unless `options.replace_config`),
    or options that contradict the artifact.
    """
    options = options or PackageOptions()
    path, repo = Path(artifact), Path(repo)
    fmt = plugin(detect_format(path))
    if fmt.triton is None:
        raise DlkitError(
            f"{path} is a {fmt.name}; Triton serves exported models. Run "
            f"`dlkit export {path}` and package what it writes"
        )
    info = read_info(path)
    name = name or default_name(path)
    check_name(name, PREPROCESS_SUFFIX if options.preprocess else "")
    backend, inherited = chosen_backend(options.backend, repo / name)
    tensors = fmt.io_tensors(path, info, native=backend == Backend.NATIVE)
    fmt.check_before_serving(path, info, options.trust)
    check_classifier(path, info, trust=options.trust)  # what Triton will serve, run once
    max_batch_size = _max_batch_size(path, tensors, info, options)
    if version is not None and not 1 <= version <= MAX_VERSION:
        raise DlkitError(f"--version must be a whole number from 1 to {MAX_VERSION}")
    config = classifier_config(name, fmt, info, tensors, backend, options.serving, max_batch_size)
    files = version_files(fmt, path, backend)
    models = [name, *(f"{name}{s}" for s in (PREPROCESS_SUFFIX, ENSEMBLE_SUFFIX))]
    check_inside(repo, models)
    with removed_if_left_empty(repo), repository_lock(repo), all_or_nothing(repo, models):
        if version is None:
            version = max(existing_versions(repo / name), default=0) + 1
            if version > MAX_VERSION:
                raise DlkitError(
                    f"{repo / name} has a version folder numbered {version - 1}, beyond what "
                    f"Triton reads ({MAX_VERSION}); remove it, or give --version"
                )
        changes = _write_model(
            repo, config, version, files, info, replace=options.replace_config, versioned=True
        )
        served, models = served_versions(repo / name), [name]
        if options.preprocess:
            models += _add_preprocessing(repo, config, tensors[0], info, options)
    return PackageResult(
        artifact=str(path),
        model=name,
        version=version,
        backend=str(backend),
        platform=config.platform or config.backend,
        max_batch_size=max_batch_size,
        models=models,
        path=str(repo / name / str(version)),
        config_changes=changes,
        backend_from_model=inherited,
        served_versions=served,
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


def _add_preprocessing(repo: Path, classifier, tensor, info, options) -> list[str]:
    """NAME_preprocess and NAME_ensemble: stateless given their config, so version 1 is
    written once and kept afterwards (its config replaced only with `replace_config`)."""
    name = classifier.name
    pre = preprocess_config(
        f"{name}{PREPROCESS_SUFFIX}", info, tensor, options.serving, classifier.max_batch_size
    )
    ens = ensemble_config(f"{name}{ENSEMBLE_SUFFIX}", classifier, pre, info)
    for model, extra, labels in (
        (pre, {"model.py": BACKEND_SOURCES / "preprocess.py"}, False),
        (ens, {}, True),
    ):
        model_dir = repo / model.name
        if not existing_versions(model_dir):
            _write_model(repo, model, 1, extra, info, labels=labels)
        elif _check_compatible(model_dir, model, options.replace_config):
            write_config(model, model_dir / CONFIG_FILE)
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
