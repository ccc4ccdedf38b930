"""The files of one version folder: the artifact's, and for the python backend dlkit's
classifier model.py with the format's runner beside it as runner.py.

The runner is the format plugin's `stub_runner`, a self-contained function whose source is
written out as a module (`make_runner`), so Triton's stub needs the format's runtime and numpy,
never dlkit itself.
"""

from __future__ import annotations

import inspect
import os
import textwrap
from pathlib import Path

from toolkit.artifacts.format_plugin import FormatPlugin
from toolkit.choices import Backend
from toolkit.errors import DlkitError

BACKEND_SOURCES = Path(__file__).parent / "backend"
RUNNER_FILE = "runner.py"


def runner_source(plugin: FormatPlugin) -> bytes:
    """runner.py for the python backend: the plugin's stub runner as `make_runner`."""
    if plugin.stub_runner is None:
        raise DlkitError(f"Triton's python backend cannot serve {plugin.name} models")
    function = plugin.stub_runner
    body = textwrap.dedent(inspect.getsource(function))
    header = (
        f'"""How dlkit\'s python-backend classifier runs a {plugin.name} model (written by '
        '`dlkit package`)."""\n\n\n'
    )
    return f"{header}{body}\n\nmake_runner = {function.__name__}\n".encode()


def version_files(
    plugin: FormatPlugin, artifact: str | os.PathLike, backend: Backend
) -> dict[str, Path | bytes]:
    """Name in the version folder -> the file to copy there (or the bytes to write)."""
    files: dict[str, Path | bytes] = dict(plugin.triton_files(artifact))
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        raise DlkitError(f"{artifact} is missing {', '.join(missing)} (a {plugin.name} artifact)")
    if backend == Backend.PYTHON:
        files["model.py"] = BACKEND_SOURCES / "classifier.py"
        files[RUNNER_FILE] = runner_source(plugin)
    return files
