"""The one place that lists the formats: each is a `FormatPlugin` (see format_plugin.py) in
a module of its own, and this is its one registry entry.

`detect_format` asks each plugin, in order, whether a file is one of its artifacts; everything
else about a format (metadata, runner, variants, Triton) is asked of its plugin. A plugin made
outside dlkit joins with `register(plugin)`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.choices import Format
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    from toolkit.artifacts.format_plugin import FormatPlugin
    from toolkit.artifacts.metadata import ArtifactInfo
    from toolkit.artifacts.runner import Runner

# Tried in this order: TorchScript archives are zip files too, so they come before checkpoints.
BUILTIN = (
    "toolkit.artifacts.torchscript",
    "toolkit.artifacts.checkpoint",
    "toolkit.artifacts.onnx",
    "toolkit.artifacts.openvino",
    "toolkit.triton.runner",  # served models, reached by URL
)
URL_SCHEMES = {"grpc://": Format.SERVED, "http://": Format.SERVED}
SNIFF_BYTES = 64

_plugins: dict[str, FormatPlugin] = {}


def plugins() -> list[FormatPlugin]:
    """Every registered format, built-in ones first (their modules are light to import)."""
    if not _plugins:
        for module in BUILTIN:
            found = importlib.import_module(module).PLUGIN
            _plugins.setdefault(found.name, found)
    return list(_plugins.values())


def register(found: FormatPlugin) -> FormatPlugin:
    """Add a format (its variants come with it); returns it. A name already taken is an error."""
    plugins()
    if not found.name or found.name in _plugins:
        raise DlkitError(f"a format named {found.name!r} is already registered")
    _plugins[found.name] = found
    return found


def unregister(name: str) -> None:
    """Remove a format added with `register` (built-in ones stay)."""
    if not any(importlib.import_module(m).PLUGIN.name == name for m in BUILTIN):
        _plugins.pop(name, None)


def plugin(name: str) -> FormatPlugin:
    """The plugin of format `name`; DlkitError naming the formats otherwise."""
    for found in plugins():
        if found.name == name:
            return found
    raise DlkitError(f"unknown format {name!r}; dlkit knows {', '.join(p.name for p in plugins())}")


def is_url(path: str | os.PathLike) -> bool:
    return str(path).startswith(tuple(URL_SCHEMES))


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file from its content (not only its name), or of a served model URL."""
    text = str(path)
    for scheme, fmt in URL_SCHEMES.items():
        if text.startswith(scheme):
            return fmt
    path = Path(path)
    if not path.is_file():
        raise DlkitError(f"model file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise DlkitError(f"cannot read {path}: {exc.strerror}") from exc
    for found in plugins():
        if found.sniff(path, head):
            return found.name
    known = ", ".join(p.name for p in plugins() if p.name != Format.SERVED)
    raise DlkitError(f"{path} is not a model file dlkit understands ({known})")


def artifact_files(path: str | os.PathLike) -> list[Path]:
    """Every file of the artifact at `path` (OpenVINO's model.bin beside its model.xml, ...)."""
    return plugin(detect_format(path)).files(path)


def read_info(path: str | os.PathLike) -> ArtifactInfo:
    """The metadata embedded in any artifact dlkit wrote (nothing in it is run); metadata
    naming a format dlkit does not know is malformed."""
    info = plugin(detect_format(path)).read_info(path)
    if not any(p.name == info.format for p in plugins()):
        raise DlkitError(
            f"{path} has dlkit metadata that is malformed (format {info.format[:40]!r} is none "
            "dlkit knows); re-export it from its checkpoint with `dlkit export`"
        )
    return info


def open_runner(
    path: str | os.PathLike, device: str = "cpu", trust: bool = False, **options: Any
) -> Runner:
    """Open any model dlkit wrote (checkpoint, TorchScript, ONNX, OpenVINO IR, ...) or serves
    (`grpc://host:8001/NAME`, `http://...`) as a Runner.

    `trust` lets formats whose files are programs (TorchScript) run code outside dlkit's
    allowlist. `options` go to the backend: `threads` (all), `autocast`/`channels_last`
    (checkpoints), `optimization`/`tensorrt` (ONNX), `objective` (OpenVINO's performance
    hint), client options (served models).
    """
    fmt = detect_format(path)
    chosen = plugin(fmt)
    if chosen.runs_code:
        options["trust"] = trust
    try:
        return chosen.open_runner(path, device=device, **options)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise DlkitError(f"{fmt} runners do not take that option: {exc}") from exc
