"""A format as one plugin: everything dlkit knows of one way to store and run a model.

A `FormatPlugin` says how to recognise its artifacts (a file, or a file with companions such as
OpenVINO's model.xml + model.bin), read their metadata, open a runner, what it can do
(devices, whether its files are programs), the file variants it offers and how each is made
from its parent (`FileVariant.make`), and how Triton serves it: natively (a platform or backend
of the NGC image, its files, parameters, tensors) and through the python backend of the
pip-installed server (`stub_runner`, a self-contained function copied next to model.py).

Plugin modules import their runtimes inside the functions that use them, so that listing the
formats and their variants (for `--help`) never loads torch, ONNX Runtime or OpenVINO.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.choices import Device, Precision
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    import numpy as np

    from toolkit.artifacts.metadata import ArtifactInfo
    from toolkit.artifacts.runner import Runner
    from toolkit.cpu import CpuFeatures


@dataclass(frozen=True)
class Tensor:
    """A model input or output as Triton declares it."""

    name: str
    dtype: str  # a Triton TYPE_* name
    dims: tuple[int, ...]  # without the batch dimension when the model batches


@dataclass(frozen=True)
class ModelProfile:
    """What decides which variants suit a model: the share of its multiply-adds in Linear
    layers (dynamic int8 quantizes those well; convolutions it makes slower), of the
    multiply-adds of one image through its convolutions and Linear layers."""

    linear_share: float = 0.0
    macs: int = 0


class BuildContext(Protocol):
    """What a variant's `make` may use besides its parent file: the fp32 model (CPU, eval
    mode), an example batch of at least two for exporters, and calibration inputs with a
    line saying what they are (the model's training images, or random inputs)."""

    model: Any
    calibrated_on: str

    def example(self) -> Any: ...

    def calibration(self) -> np.ndarray: ...

    def options(self, fmt: str) -> dict[str, Any]:
        """Export options for format `fmt` (`dlkit export --opset`, `--static-batch`)."""
        ...


# make(target, parent, info, context) writes the artifact at `target` (its companions beside
# it) carrying `info`, from `parent` (the parent variant's file; None: from context.model), and
# returns what it did (for the record: method, types, calibration, ...).
Make = Callable[[Path, "Path | None", "ArtifactInfo", BuildContext], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class VariantBase:
    """What every variant has: a name used everywhere, a line of description, the precision
    it computes in (None: autocast in the device's type), and a rank among ties in `dlkit
    deploy` (`simplicity`: the lower, the simpler)."""

    name: str
    description: str
    precision: Precision | None = Precision.FP32
    simplicity: int = 0
    channels_last: bool = False
    cuda_only: bool = False

    @property
    def servable(self) -> bool:
        return False

    @property
    def autocast(self) -> bool:
        return self.precision is None

    def precision_on(self, device: str) -> Precision:
        if self.precision is not None:
            return self.precision
        return Precision.FP16 if device == Device.CUDA else Precision.BF16


@dataclass(frozen=True, kw_only=True)
class FileVariant(VariantBase):
    """A variant stored as an artifact of one format, made from its `parent` variant's file
    (or, with no parent, exported from the fp32 model) by `make`.

    `needs(cpu)` says why it cannot run on this CPU ("" when it can); `suits(profile)` whether
    it is offered by default for a model (it can still be asked for by name); `default`
    whether it is among the device's default variants at all.
    """

    format: str
    make: Make
    parent: str | None = None
    devices: tuple[str, ...] = (Device.CPU,)
    needs: Callable[[CpuFeatures], str] | None = None
    suits: Callable[[ModelProfile], bool] | None = None
    default: bool = True

    @property
    def servable(self) -> bool:
        return True

    @property
    def cast(self) -> None:
        return None

    def unavailable(self, device: str, cpu: CpuFeatures) -> str:
        """Why this variant cannot run on `device` here, or ""."""
        if device not in self.devices:
            return f"{self.name} runs on {' or '.join(self.devices)}"
        if device == Device.CPU and self.needs is not None:
            return self.needs(cpu)
        return ""


@dataclass(frozen=True)
class TritonNative:
    """How the NGC image's Triton serves a format natively: the config's `platform` or
    `backend`, the server backend that loads it, and the file name it loads."""

    platform: str = ""
    backend: str = ""
    server_backend: str = ""
    model_file: str = ""
    companions: tuple[str, ...] = ()  # other files of a version folder (OpenVINO's model.bin)
    # Every config parameter dlkit writes for this format (native backend and python-backend
    # runner alike): a repository holding others was not written by dlkit.
    parameters: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        return (self.model_file, *self.companions)


class FormatPlugin:
    """Base of every format plugin; subclasses set the class attributes and override what
    their format does differently."""

    name: str = ""
    suffix: str = ""  # how its artifacts' file names end (`best.onnx`, `best.openvino.xml`)
    runs_code = False  # its files are programs: opening one takes `trust`
    devices: tuple[str, ...] = (Device.CPU,)
    exportable = False  # `dlkit export --<name>` writes its fp32 variant from a checkpoint
    triton: TritonNative | None = None  # None: not served by Triton (checkpoints, URLs)
    accelerators: tuple[str, ...] = ()  # execution accelerators its native backend can start
    # A self-contained function `make_runner(path, params, gpu, device_id)` returning a callable
    # (float32 batch -> logits) for Triton's python backend, set with staticmethod(). Its
    # source is copied into the model's version folder as runner.py: it may use only its own
    # imports. None: the python backend cannot serve this format.
    stub_runner: Callable[..., Any] | None = None

    # -------------------------------------------------------------------- the artifact

    def sniff(self, path: Path, head: bytes) -> bool:
        """Whether `path` (whose first bytes are `head`) is an artifact of this format."""
        return False

    def files(self, path: str | os.PathLike) -> list[Path]:
        """Every file an artifact consists of, the one named by `path` first."""
        return [Path(path)]

    def stem(self, path: str | os.PathLike) -> str:
        """The artifact's name without this format's suffix."""
        name = Path(path).name
        return name[: -len(self.suffix)] if self.suffix and name.endswith(self.suffix) else name

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        raise DlkitError(f"{self.name} artifacts carry no dlkit metadata")

    def open_runner(self, path: str | os.PathLike, device: str = "cpu", **options: Any) -> Runner:
        raise DlkitError(f"{self.name} artifacts cannot be run here")

    def fixed_batch_options(self, device: str, batch_size: int) -> dict[str, Any]:
        """Options for `open_runner` when the runner will only be given batches of
        `batch_size` on `device` (the bench builds one per batch size): what static shapes
        allow, such as CUDA graphs."""
        return {}

    def unavailable(self, device: str) -> str:
        """Why this format cannot run on `device` on this machine (a runtime not installed,
        no provider for the device), or "" (checked before any file is made)."""
        if device not in self.devices:
            return f"{self.name} runs on {' or '.join(self.devices)}, not {device}"
        return ""

    def variants(self) -> tuple[FileVariant, ...]:
        """The file variants this format offers, parents before children."""
        return ()

    # ------------------------------------------------------------------------- Triton

    def triton_files(self, path: str | os.PathLike) -> dict[str, Path]:
        """The files of a Triton version folder: name there -> the artifact file it copies,
        the model file first."""
        assert self.triton is not None, f"{self.name} is not served by Triton"
        return {self.triton.model_file: Path(path)}

    def io_tensors(
        self, path: str | os.PathLike, info: ArtifactInfo, native: bool
    ) -> tuple[Tensor, Tensor]:
        """The input and output as Triton declares them (`native`: for the NGC backend,
        whose naming conventions may differ from the python backend's)."""
        raise DlkitError(f"{self.name} artifacts are not served by Triton")

    def audit(self, path: Path) -> str:
        """What is wrong with this format's model file found in a repository dlkit is asked
        to serve ("" if nothing): TorchScript files, which are programs, are code-checked."""
        return ""

    def check_before_serving(self, path: Path, info: ArtifactInfo, trust: bool) -> None:
        """Raise DlkitError if Triton should not be given this artifact (a check beyond its
        metadata and tensors: TorchScript runs its file on zeros, say)."""

    def triton_parameters(self, threads: int, inter_op_threads: int, info: ArtifactInfo) -> dict:
        """Parameters of the native backend's config: thread counts under its own keys, and
        whatever else running this artifact as dlkit does needs (a precision hint, say)."""
        return {}

    def stub_parameters(self, info: ArtifactInfo) -> dict:
        """Config parameters the python-backend runner (`stub_runner`) reads besides the
        thread counts."""
        return {}

    def thread_parameters(self) -> tuple[str, str]:
        """The native backend's parameter keys for intra-op and inter-op threads."""
        return ("intra_op_thread_count", "inter_op_thread_count")


def zip_names(path: Path) -> list[str]:
    """The member names of a zip archive (checkpoints and TorchScript files are both zips)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DlkitError(f"{path} is a damaged archive: {exc}") from exc


def is_torchscript_archive(path: Path) -> bool:
    """A zip whose members hold TorchScript code (what tells it from a checkpoint)."""
    return zipfile.is_zipfile(path) and any("/code/" in n for n in zip_names(path))
