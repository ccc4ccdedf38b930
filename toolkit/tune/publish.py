"""Writing the chosen configuration into the user's repository, as a new version.

`package_artifact` writes it (atomically; earlier version folders are never touched), first on
a linked copy of the repository. The new config serves every version of the model (what tuning
is for). When the model cannot take the tuned variant as a version (another format, say), it is
written as `<name>_tuned` instead, and the result says why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.artifacts import detect_format, plugin
from toolkit.errors import DlkitError
from toolkit.files import rehearse, sha256_file
from toolkit.triton.configs import (
    CONFIG_FILE,
    ServingOptions,
    read_config,
    serving_options,
)
from toolkit.triton.repository import PackageOptions, package_artifact
from toolkit.triton.versions import existing_versions
from toolkit.tune.inputs import Candidate

TUNED_SUFFIX = "_tuned"


def publish(
    candidate: Candidate, serving: ServingOptions, repo: str | os.PathLike, name: str
) -> dict[str, Any]:
    """Write `candidate` served with `serving` as the next version of `name` (or of
    `<name>_tuned`); returns what was written, with `instead_of` and `reason` when the
    other name was used."""
    repo = Path(repo)
    options = PackageOptions(backend=candidate.backend, serving=serving, replace_config=True)

    def write(target: Path, model: str):
        return package_artifact(candidate.artifact, target, model, options=options)

    chosen, reason = name, ""
    try:
        rehearse(repo, lambda copy: write(copy, name))
    except DlkitError as exc:
        chosen, reason = name + TUNED_SUFFIX, str(exc)
        rehearse(repo, lambda copy: write(copy, chosen))
    result = write(repo, chosen).to_dict()
    if reason:
        result |= {"instead_of": name, "reason": reason}
    return result


def served_options(
    candidate: Candidate, repo: str | os.PathLike, name: str
) -> ServingOptions | None:
    """How model `name` of `repo` serves now, when its newest version is the candidate's
    very file (byte for byte); else None (another file, or no such model)."""
    model_dir = Path(repo) / name
    versions = existing_versions(model_dir)
    if not versions or not (model_dir / CONFIG_FILE).is_file():
        return None
    newest = model_dir / str(versions[-1])
    files = plugin(detect_format(candidate.artifact)).triton_files(candidate.artifact)
    for name_there, source in files.items():
        if not (newest / name_there).is_file():
            return None
        if sha256_file(newest / name_there) != sha256_file(source):
            return None
    return serving_options(read_config(model_dir / CONFIG_FILE))
