"""Shared fixtures: a CLI runner, factories for artifacts and image folders, the digits as a
real image folder, an untrained digits checkpoint (fast tests train nothing) and a tiny
trained run (for slow tests that need a model that has learnt something).

Factories are fixtures that return a function (`make_info`, `make_model`, `make_checkpoint`,
`make_folder`, `make_exif_jpegs`), so test modules never import from each other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from toolkit.artifacts.checkpoint import save_checkpoint
from toolkit.artifacts.metadata import ArtifactInfo, DataSource, ModelSpec, Preprocessing
from toolkit.cli import cli
from toolkit.training.models import create_model

# One intra-op thread: on a shared 2-core machine torch's default two threads fight other
# work and a test's training can take 10x longer.
torch.set_num_threads(1)

# Small and fast: an MLP on 16×16 digits trains to ~90% in a couple of seconds.
TINY = ["--model", "simplenet", "--image-size", "16", "--batch-size", "128", "--quiet"]


# Fixtures that train a model: only tests marked slow may use them, so `-m "not slow"`
# trains nothing.
TRAINING_FIXTURES = {"tiny_run"}


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: skipped (with the reason) where there is none. A fast
    test that asks for a trained model is a mistake in the suite: refused at collection."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
        trains = TRAINING_FIXTURES & set(getattr(item, "fixturenames", ()))
        if trains and "slow" not in item.keywords:
            raise pytest.UsageError(f"{item.nodeid} uses {trains} (it trains) but is not slow")


class Cli:
    """Runs `dlkit ...` in-process; `json()` parses the single JSON object it prints."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0):
        result = self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    def json(self, *args: str) -> dict:
        result = self(*args, "--json")
        return json.loads(result.stdout)


@pytest.fixture
def dlkit() -> Cli:
    return Cli()


def _info(
    name: str = "smallresnet",
    channels: int = 3,
    size: int = 32,
    classes: int = 5,
    source: DataSource | None = None,
) -> ArtifactInfo:
    """Metadata for a model without data on this machine (parity checks use random inputs).
    Classes are c0, c1, ...; on the digits, "0" to "9" as the dataset names them."""
    digits = source is not None and source.dataset == "digits"
    return ArtifactInfo(
        classes=tuple(str(i) if digits else f"c{i}" for i in range(classes)),
        preprocessing=Preprocessing.default(channels, size),
        model=ModelSpec(name, {}),
        source=source or DataSource(dataset=None, data="/nonexistent"),
    )


def _model(name: str = "smallresnet", channels: int = 3, size: int = 32, classes: int = 5):
    """A seeded untrained model and its metadata (the spec filled in)."""
    torch.manual_seed(0)
    model, spec = create_model(name, classes, channels, size)
    return model.eval(), _info(name, channels, size, classes).derive(model=spec)


def _checkpoint(path: Path, name="smallresnet", channels=3, size=32, classes=5, source=None):
    """An untrained dlkit checkpoint at `path` (optionally pointing at real data)."""
    model, info = _model(name, channels, size, classes)
    info = _info(name, channels, size, classes, source).derive(model=info.model)
    save_checkpoint({"info": info.to_dict(), "model_state": model.state_dict()}, path)
    return path


def _folder(root: Path, classes=("cat", "dog"), per_class=5, size=(20, 24), mode="RGB") -> Path:
    """An image folder `root/<class>/<i>.png` of random pictures."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (*size[::-1], 3) if mode == "RGB" else size[::-1]
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


def _exif_jpegs(folder: Path) -> tuple[Path, Path]:
    """The same 48×32 picture as `folder/upright.jpg` and as `folder/turned.jpg`, stored turned
    a quarter and tagged EXIF orientation 6 (16-pixel single-colour blocks survive JPEG
    exactly, so both decode to the same pixels once the orientation is applied)."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = np.random.default_rng(1).integers(0, 255, (2, 3, 3), dtype=np.uint8)
    upright = Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8)))
    upright.save(folder / "upright.jpg", quality=100, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    turned = upright.transpose(Image.Transpose.ROTATE_90)
    turned.save(folder / "turned.jpg", quality=100, subsampling=0, exif=exif)
    return folder / "upright.jpg", folder / "turned.jpg"


@pytest.fixture(scope="session")
def make_exif_jpegs():
    return _exif_jpegs


@pytest.fixture(scope="session")
def make_info():
    return _info


@pytest.fixture(scope="session")
def make_model():
    return _model


@pytest.fixture(scope="session")
def make_checkpoint():
    return _checkpoint


@pytest.fixture(scope="session")
def make_folder():
    return _folder


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """`dlkit train` options for a model that trains in seconds."""
    return list(TINY)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from toolkit.data import write_digits_folder

    out = tmp_path_factory.mktemp("data") / "digits"
    write_digits_folder(out)
    return out


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory) -> Path:
    """An untrained simplenet on the embedded digits at 16 px, grayscale: a real checkpoint
    with real validation data, made without training."""
    folder = tmp_path_factory.mktemp("untrained")
    source = DataSource(dataset="digits")
    return _checkpoint(folder / "digits.pt", "simplenet", 1, 16, 10, source)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A 4-epoch simplenet run on the embedded digits (its summary JSON)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return Cli().json("train", *TINY, "--epochs", "4", "--out", out)


# --------------------------------------------------------------------------- Triton fixtures
# Shared by test_repository, test_server and test_client: the tiny run exported once, a few
# digit images, and one pip-installed tritonserver (python backend) for the whole session.

TRITON_START_TIMEOUT = 300  # stubs import torch; a busy 2-core machine needs time


@pytest.fixture(scope="session")
def triton_timeout() -> float:
    """Seconds a test waits for a tritonserver's models to load."""
    return TRITON_START_TIMEOUT


@pytest.fixture(scope="session")
def tiny_exports(tiny_run, tmp_path_factory) -> dict[str, str]:
    """The tiny digits run exported to ONNX and TorchScript: {format: path}."""
    out = tmp_path_factory.mktemp("triton-export")
    result = Cli().json("export", tiny_run["best_checkpoint"], "--out", out)
    return {a["format"]: a["path"] for a in result["artifacts"]}


@pytest.fixture(scope="session")
def digit_images(digits_dir) -> list[str]:
    """Twelve validation digits as PNG files."""
    return [str(p) for p in sorted((digits_dir / "val").rglob("*.png"))[::29][:12]]


@pytest.fixture(scope="session")
def free_ports():
    """A function returning `{http_port, grpc_port, metrics_port}` that were free just now."""
    from toolkit.triton.server import free_port

    return lambda: {f"{kind}_port": free_port() for kind in ("http", "grpc", "metrics")}


class Served:
    """The session's server (a test may replace `server`), its repository, and the
    repository's files as they were packaged (before the server started)."""

    def __init__(self, server, repo: Path):
        self.server, self.repo = server, repo
        self.packaged = snapshot(repo)

    @property
    def grpc(self) -> str:
        return self.server.grpc_url

    @property
    def http(self) -> str:
        return self.server.http_url


@pytest.fixture(scope="session")
def served(tiny_exports, tmp_path_factory, free_ports):
    """tritonserver serving the tiny model as ONNX (`tiny`, with the preprocessing ensemble)
    and TorchScript (`tiny_ts`), all on the python backend; a native-backend copy
    (`tiny_native`) is in the repository too, which this server cannot serve."""
    import dataclasses

    from toolkit.triton.configs import ServingOptions
    from toolkit.triton.repository import PackageOptions, package_artifact
    from toolkit.triton.server import TritonServer

    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    python = PackageOptions(backend="python", serving=ServingOptions(max_queue_delay_us=500))
    with_images = dataclasses.replace(python, preprocess=True)
    package_artifact(tiny_exports["onnx"], repo, "tiny", options=with_images)
    package_artifact(tiny_exports["torchscript"], repo, "tiny_ts", options=python)
    package_artifact(tiny_exports["onnx"], repo, "tiny_native")
    handle = Served(TritonServer(repo, **free_ports()), repo)
    try:
        handle.server.start(TRITON_START_TIMEOUT)
        yield handle
    finally:
        handle.server.stop()  # a test may have replaced it


@pytest.fixture
def start_triton(free_ports):
    """A function that starts a tritonserver on a repository (on free ports unless given) and
    waits for its models; every server it started is stopped after the test."""
    from toolkit.triton.server import TritonServer

    started = []

    def start(repo: Path, **options):
        server = TritonServer(repo, **(free_ports() | options))
        started.append(server)
        return server.start(TRITON_START_TIMEOUT)

    yield start
    for server in started:
        server.stop()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def folder_snapshot():
    return snapshot


@pytest.fixture
def small_disk(tmp_path):
    """A factory of tiny tmpfs mounts (root only; skipped where mounting is not permitted)."""
    mounts = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                              capture_output=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        # Lazily: torch.save keeps the failed file open (deleted) until the process exits.
        subprocess.run(["umount", "--lazy", where], check=True)
