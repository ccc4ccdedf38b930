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

from toolkit.errors import DlkitError
from toolkit.files import rehearse
from toolkit.triton.configs import ServingOptions
from toolkit.triton.repository import PackageOptions, package_artifact
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
