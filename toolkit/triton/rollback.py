"""What one `dlkit package` run may touch, and all or nothing of it: a classifier with its
preprocessing model and ensemble is three model folders, each written atomically on its own,
so a failure between them (a full disk) would leave a half package; `all_or_nothing` puts the
folders back as they were. `check_inside` keeps every write inside the repository."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from toolkit.errors import DlkitError
from toolkit.files import write_bytes


def check_inside(repo: Path, models: list[str]) -> None:
    """Refuse model folders that are symbolic links: a version written into one would land
    wherever it points, outside the repository."""
    for name in models:
        folder = repo / name
        if folder.is_symlink():
            raise DlkitError(
                f"{folder} is a symbolic link (to {os.readlink(folder)}); dlkit writes only inside "
                f"the repository: replace the link with a folder, or package under another --name"
            )


@contextlib.contextmanager
def all_or_nothing(repo: Path, models: list[str]) -> Iterator[None]:
    """If the body raises, leave the model folders `models` of `repo` as they were before it:
    folders and version folders it created are removed, files it replaced (a config, the
    labels) get their old bytes back. Use it inside the repository's lock."""
    before = {name: _state(repo / name) for name in models}
    try:
        yield
    except BaseException:
        # What was added goes first: it frees the room the old files may need.
        for name, state in before.items():
            _remove_added(repo / name, state)
        for name, state in before.items():
            _restore(repo / name, state)
        raise


@contextlib.contextmanager
def removed_if_left_empty(repo: Path) -> Iterator[None]:
    """If the body raises and `repo` did not exist before it, remove `repo` when nothing but
    hidden files (its lock file) is left in it."""
    fresh = not repo.exists()
    try:
        yield
    except BaseException:
        if fresh and repo.is_dir() and all(p.name.startswith(".") for p in repo.iterdir()):
            shutil.rmtree(repo, ignore_errors=True)
        raise


def _state(folder: Path) -> dict[str, bytes | None] | None:
    """A model folder's entries: files with their bytes (configs and labels: small), folders
    as None; None when there is no such folder."""
    if not folder.is_dir():
        return None
    return {p.name: p.read_bytes() if p.is_file() else None for p in folder.iterdir()}


def _remove_added(folder: Path, state: dict[str, bytes | None] | None) -> None:
    if state is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name not in state:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _restore(folder: Path, state: dict[str, bytes | None] | None) -> None:
    for name, data in (state or {}).items():
        path = folder / name
        if data is not None and (not path.is_file() or path.read_bytes() != data):
            with contextlib.suppress(Exception):  # best effort: the first error is the one told
                write_bytes(path, data)
