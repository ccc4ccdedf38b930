"""Writing the manifests folder whole: YAML files, the kustomization and the README.

The folder is written beside its target and renamed into place, so a failure never leaves a
half-written folder where a good one was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from toolkit.errors import DlkitError
from toolkit.files import atomic_path, output_path
from toolkit.k8s import metrics
from toolkit.k8s.manifests import build_manifests, kustomization
from toolkit.k8s.options import K8sOptions, plain_triton_warning, resolve
from toolkit.k8s.readme import ADAPTER_VALUES, readme
from toolkit.k8s.repository import python_backend_models, served_models

HEADER = "# Written by `dlkit k8s`; see README.md in this folder.\n"


@dataclass
class K8sResult:
    """What `write_k8s` wrote."""

    out: str
    files: list[str]
    models: list[str]
    store: str
    kserve: bool
    image: str | None  # None for KServe: its runtime picks the image
    namespace: str | None
    metric: str | None  # the HPA's custom metric (None for KServe)
    python_backend_models: dict[str, str]  # name -> what its model.py imports
    warnings: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def to_yaml(manifest: dict) -> str:
    return HEADER + yaml.safe_dump(manifest, sort_keys=False, width=1000)


def write_k8s(
    repo: str | os.PathLike, out: str | os.PathLike, options: K8sOptions, force: bool = False
) -> K8sResult:
    """Write Kustomize-ready manifests for Triton serving `repo` into the folder `out`.

    Raises DlkitError for bad options, an unusable repository, or an `out` that exists and is
    not empty (unless `force`, which replaces it whole).
    """
    out = output_path(out, "--out")
    folder = Path(os.path.abspath(out))  # `.` and `..` get a name
    if folder == Path.cwd() or folder in Path.cwd().parents:
        raise DlkitError(
            f"--out {out} holds the folder you are working in, which would be replaced; "
            "write the manifests to a folder of their own (say --out k8s)"
        )
    if out.exists() and not out.is_dir():
        raise DlkitError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DlkitError(f"{out} exists and is not empty; pass --force to replace it")
    spec = resolve(options, served_models(repo), python_backend_models(repo))
    manifests = build_manifests(spec)
    texts = {name: to_yaml(m) for name, m in manifests.items()}
    texts["kustomization.yaml"] = to_yaml(kustomization(spec, list(manifests)))
    if not options.kserve:
        texts[ADAPTER_VALUES] = to_yaml(metrics.adapter_values())
    texts["README.md"] = readme(spec, str(repo), str(out), sorted([*texts, "README.md"]))
    replace_folder(folder, texts)
    return K8sResult(
        out=str(out),
        files=sorted(texts),
        models=list(spec.models),
        store=str(spec.store),
        kserve=options.kserve,
        image=None if options.kserve else spec.image,
        namespace=options.namespace,
        metric=None if options.kserve else metrics.HPA_METRIC,
        python_backend_models=spec.python_models,
        warnings=[w for w in [plain_triton_warning(spec)] if w],
    )


def replace_folder(out: Path, texts: dict[str, str]) -> None:
    """Make `out` a folder holding exactly `texts` (file name -> text), all or nothing."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for name, text in texts.items():
                (tmp / name).write_text(text)
            # A rename cannot replace a folder that has files: move the old one aside first.
            if out.exists():
                os.replace(out, old)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old)
