"""The verified-artifact store that `dlkit bench` and `dlkit deploy` share.

Each file variant of a model is made once per key: the model's SHA-256 (its checkpoint's, or
its weights' for a `--model` with random weights), the variant and its lineage, the versions of
the toolchain that makes and runs it (torch, ONNX, ONNX Runtime, OpenVINO, dlkit) and the CPU
features that decide how int8 files are written. An entry holds the artifact's files and a
record of what was done and measured once (parity against eager fp32, the variant's answers on
the validation split); a gate is decided from the record for whatever budget a caller has.

Entries are written into a temporary folder and renamed into place whole, so a killed run
leaves no half entry (its temporary folder is removed by the next run); an entry whose files
no longer match their recorded SHA-256 is made again. The store lives in `$DLKIT_STORE`, else
`$XDG_CACHE_HOME/dlkit/artifacts` (`~/.cache/dlkit/artifacts`); delete it to reclaim space.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import __version__, processes
from toolkit.cpu import cpu_features
from toolkit.errors import DlkitError
from toolkit.files import sha256_file, write_json

STORE_ENV = "DLKIT_STORE"
RECORD_FILE = "record.json"
STORE_VERSION = 1  # raise when records or keys change meaning
TOOLCHAIN = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "onnxscript")


def default_root() -> Path:
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dlkit" / "artifacts"


def toolchain_versions() -> dict[str, str]:
    """Versions of the packages that make and run artifacts (read without importing them)."""
    versions = {"dlkit": __version__, "store": str(STORE_VERSION)}
    for package in TOOLCHAIN:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def entry_key(source_sha256: str, lineage: list[str], extra: dict[str, Any]) -> str:
    """The key of a variant (its `lineage`, root first) of the model with `source_sha256`."""
    identity = {
        "source": source_sha256,
        "lineage": lineage,
        "toolchain": toolchain_versions(),
        "cpu": cpu_features().int8_key(),
        **extra,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class StoredArtifact:
    """An entry of the store: the artifact (its main file `path`), and its record."""

    variant: str
    path: Path
    record: dict[str, Any]
    reused: bool = False

    @property
    def files(self) -> list[Path]:
        return [self.path.parent / name for name in self.record["files"]]


class ArtifactStore:
    """Entries under `root`, one folder per key."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DlkitError(
                f"cannot create the artifact store {self.root}: {exc.strerror}; set "
                f"{STORE_ENV} to a writable folder"
            ) from exc
        self._remove_leftovers()

    def folder(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str, variant: str) -> StoredArtifact | None:
        """The entry for `key`, if it is there and intact."""
        folder = self.folder(key)
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
            files = record["files"]
            if not files or any(Path(n).name != n or n in (".", "..") for n in files):
                return None  # an entry's files are plain names inside its own folder
            if set(files) != set(record["sha256"]):
                return None
            if any(sha256_file(folder / n) != h for n, h in record["sha256"].items()):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return StoredArtifact(variant, folder / files[0], record, reused=True)

    def put(
        self, key: str, variant: str, make: Callable[[Path], tuple[list[Path], dict[str, Any]]]
    ) -> StoredArtifact:
        """Make an entry: `make(folder)` writes the artifact into an empty temporary folder
        and returns its files (main one first) and the record; both are renamed into place
        whole. An entry another process finished first wins (it is the same artifact)."""
        folder = self.folder(key)
        tmp = self.root / f".tmp-{os.getpid()}-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            files, record = make(tmp)
            names = [f.name for f in files]
            record |= {
                "variant": variant,
                "files": names,
                "sha256": {n: sha256_file(tmp / n) for n in names},
            }
            write_json(tmp / RECORD_FILE, record)
            if folder.exists() and self.lookup(key, variant) is None:
                shutil.rmtree(folder)  # damaged: made again
            with contextlib.suppress(OSError):  # another process may have finished it first
                os.replace(tmp, folder)
        except OSError as exc:
            raise DlkitError(f"cannot write to the artifact store {self.root}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        found = self.lookup(key, variant)
        if found is None:
            raise DlkitError(f"the artifact store entry {folder} was damaged while written")
        found.reused = False
        return found

    def _remove_leftovers(self) -> None:
        """Temporary folders of runs that were killed mid-write."""
        for leftover in self.root.glob(".tmp-*"):
            pid = leftover.name.split("-")[1]
            if pid.isdecimal() and not processes.running(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
