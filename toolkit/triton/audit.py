"""What Triton would run from a model repository, checked before `dlkit serve` and
`dlkit tune --repo` hand the repository to it.

Triton runs a python-backend model's `model.py` (and anything beside it that Python would
import: other .py files, `__pycache__`), a TorchScript `model.pt`, and the libraries a config
names, all with the privileges of the server. A record of hashes kept in the repository would
prove nothing (whoever can change the files can change the record), so the files themselves are
checked against what `dlkit package` writes:

- a model folder holds `config.pbtxt`, `labels.txt` and numbered version folders; a version
  folder its format's files (`model.onnx`, `model.pt`, `model.xml` + `model.bin`, ...: each
  format plugin's `triton` says) and, for the python backend, `model.py` and `runner.py`;
  nothing else, and no symbolic links;
- every `model.py` is, byte for byte, one of this dlkit's backends (`toolkit/triton/backend`),
  and every `runner.py` the runner dlkit writes for the format its config names;
- every model file passes its format's check (`FormatPlugin.audit`: TorchScript's code check);
- a config names a backend dlkit writes (python, ensemble, or a format's own), no library
  (`model_operations`, `cc_model_filenames`, repository agents), no other model file, no
  parameter dlkit does not write (`EXECUTION_ENV_PATH` would run another Python), and a
  python-backend classifier's `artifact_file` is its format's model file.

Anything else is refused, naming the file, unless the caller trusts the repository (`--trust`).
Nothing is written: the repository is only read. ONNX files are graphs, not programs; they are
not checked here.
"""

from __future__ import annotations

import os
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import plugins
from toolkit.artifacts.format_plugin import FormatPlugin
from toolkit.errors import DlkitError
from toolkit.triton.configs import CONFIG_FILE, INFO_PARAMETER, LABELS_FILE, read_config
from toolkit.triton.version_files import BACKEND_SOURCES, RUNNER_FILE, runner_source
from toolkit.triton.versions import VERSIONS_PARAMETER

PYTHON_MODEL = "model.py"
DLKIT_PARAMETERS = frozenset(
    {INFO_PARAMETER, VERSIONS_PARAMETER, "artifact_format", "artifact_file"}
)
MAX_PROBLEMS = 5


def _served() -> list[FormatPlugin]:
    return [p for p in plugins() if p.triton is not None]


def _native(config: mc.ModelConfig) -> FormatPlugin | None:
    """The format whose native backend a config names (None: python, ensemble, unknown)."""
    for found in _served():
        native = found.triton
        if (native.platform or native.backend) and (
            (native.platform and config.platform == native.platform)
            or (native.backend and config.backend == native.backend)
        ):
            return found
    return None


def _python_format(config: mc.ModelConfig) -> FormatPlugin | None:
    """The format a python-backend classifier's config names (None: none dlkit knows)."""
    name = (
        config.parameters["artifact_format"].string_value
        if "artifact_format" in config.parameters
        else ""
    )
    return next((p for p in _served() if p.name == name), None)


def check_repository(repo: str | os.PathLike, models: list[str], trust: bool = False) -> None:
    """Refuse to serve `models` of `repo` when any holds what dlkit does not write (see the
    module docstring), unless `trust`."""
    if trust:
        return
    problems = [
        p for model in with_steps(Path(repo), models) for p in model_problems(Path(repo), model)
    ]
    if problems:
        more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
        raise DlkitError(
            f"{repo} holds what dlkit does not write, which Triton would run with your "
            f"privileges: {'; '.join(problems[:MAX_PROBLEMS])}{more}. Serve repositories "
            "written by `dlkit package`, or pass --trust if you trust whoever wrote this one."
        )


def with_steps(repo: Path, models: list[str]) -> list[str]:
    """`models` and, for ensembles, the models of their steps (Triton loads those too)."""
    found: list[str] = []
    todo = list(models)
    while todo:
        model = todo.pop(0)
        if model in found:
            continue
        found.append(model)
        try:
            config = read_config(repo / model / CONFIG_FILE)
        except DlkitError:
            continue  # model_problems names it
        todo += [step.model_name for step in config.ensemble_scheduling.step]
    return found


def model_problems(repo: Path, model: str) -> list[str]:
    """What in `repo/model` dlkit does not write, one phrase per file."""
    folder = repo / model
    if folder.is_symlink() or not folder.is_dir():
        return [f"{model} is not a folder (a symbolic link?)"]
    try:
        config = read_config(folder / CONFIG_FILE)
    except DlkitError as exc:
        return [f"{model}/{CONFIG_FILE}: {exc}"]
    problems = [f"{model}/{CONFIG_FILE}: {p}" for p in config_problems(config)]
    for entry in sorted(folder.iterdir()):
        where = f"{model}/{entry.name}"
        if entry.is_symlink():
            problems.append(f"{where} is a symbolic link")
        elif entry.is_dir() and entry.name.isascii() and entry.name.isdigit():
            problems += _version_problems(entry, where, config)
        elif entry.is_dir() and not _leftover(entry.name):
            problems.append(f"{where} is a folder dlkit does not write")
        elif entry.is_file() and entry.name not in (CONFIG_FILE, LABELS_FILE):
            problems.append(f"{where} is a file dlkit does not write")
        elif not entry.is_dir() and not entry.is_file():
            problems.append(f"{where} is not a regular file")
    return problems


def config_problems(config: mc.ModelConfig) -> list[str]:
    """What a config asks Triton to load or run that dlkit's configs never do."""
    problems = []
    known = config.platform == "ensemble" or (config.backend == "python" and not config.platform)
    if not known and _native(config) is None:
        problems.append(f"backend {config.backend or config.platform!r}")
    if config.model_operations.op_library_filename:
        problems.append("it loads operator libraries (model_operations)")
    if config.cc_model_filenames or config.model_repository_agents.agents:
        problems.append("it names other model files or repository agents")
    if any(i.input_data_file for w in config.model_warmup for i in w.inputs.values()):
        problems.append("its warm-up reads input files (dlkit warms up on zeros)")
    files = _version_files(config)
    if config.default_model_filename and config.default_model_filename not in files:
        problems.append(f"model file {config.default_model_filename!r}")
    allowed = DLKIT_PARAMETERS | {k for p in _served() for k in p.triton.parameters}
    unknown = sorted(set(config.parameters) - allowed)
    if unknown:
        problems.append(f"parameters dlkit does not write ({', '.join(unknown[:3])})")
    params = {k: config.parameters[k].string_value for k in ("artifact_format", "artifact_file")
              if k in config.parameters}  # fmt: skip
    fmt = _python_format(config)
    if params and (fmt is None or fmt.triton.model_file != params.get("artifact_file")):
        problems.append(f"artifact {params} is not a model file dlkit writes, as its format")
    return problems


def _version_files(config: mc.ModelConfig) -> frozenset[str]:
    if config.platform == "ensemble":
        return frozenset()
    if config.backend == "python":
        fmt = _python_format(config)
        extra = (RUNNER_FILE, *fmt.triton.files) if fmt is not None else ()
        return frozenset({PYTHON_MODEL, *extra})
    native = _native(config)
    return frozenset(native.triton.files) if native is not None else frozenset()


def _version_problems(folder: Path, where: str, config: mc.ModelConfig) -> list[str]:
    problems = []
    allowed = _version_files(config)
    formats = [f for f in (_python_format(config), _native(config)) if f is not None]
    for entry in sorted(folder.iterdir()):
        name = f"{where}/{entry.name}"
        if entry.is_symlink() or not entry.is_file():
            problems.append(f"{name} is not a regular file")
        elif entry.name not in allowed:
            problems.append(f"{name} is a file dlkit does not write there")
        elif entry.name == PYTHON_MODEL and entry.read_bytes() not in _backend_sources():
            problems.append(f"{name} is not one of dlkit's python backends")
        elif entry.name == RUNNER_FILE and entry.read_bytes() != runner_source(formats[0]):
            problems.append(f"{name} is not the runner dlkit writes for {formats[0].name}")
        else:
            problems += [
                why for fmt in formats if entry.name == fmt.triton.model_file
                if (why := fmt.audit(entry))
            ]  # fmt: skip
    return problems


def _backend_sources() -> set[bytes]:
    return {p.read_bytes() for p in BACKEND_SOURCES.glob("*.py") if p.name != "__init__.py"}


def _leftover(name: str) -> bool:
    """A temporary folder a killed `dlkit package` left (`.NAME.tmp-PID`): Triton ignores
    folders whose names are not numbers, and the next package removes it."""
    return name.startswith(".") and ".tmp-" in name
