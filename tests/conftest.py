"""Shared fixtures: a CLI runner, factories for artifacts and image folders, the digits as a
real image folder, an untrained digits checkpoint (fast tests train nothing) and a tiny
trained run (for slow tests that need a model that has learnt something).

Factories are fixtures that return a function (`make_info`, `make_model`, `make_checkpoint`,
`make_folder`, `make_shapes`, `make_exif_jpegs`), so test modules never import from each
other."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

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


@pytest.fixture(autouse=True, scope="session")
def artifact_store(tmp_path_factory):
    """One artifact store for the session (never the user's ~/.cache): tests that build the
    same variants of the same model share them, as `dlkit bench` and `dlkit deploy` do."""
    from toolkit.variants.store import STORE_ENV

    root = tmp_path_factory.mktemp("artifact-store")
    previous = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = str(root)
    yield root
    if previous is None:
        os.environ.pop(STORE_ENV, None)
    else:
        os.environ[STORE_ENV] = previous


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


def _shape_picture(rng, shape: int, size: tuple[int, int], mode: str) -> Image.Image:
    """A circle, square or triangle (by `shape`) on a shaded, noisy background, blurred a
    little: small pictures a classifier has to learn, not memorise pixel by pixel."""
    width, height = size
    base = rng.uniform(60, 190)
    slope_x, slope_y = rng.uniform(-60, 60, 2)
    yy, xx = np.mgrid[0:height, 0:width]
    background = base + slope_x * xx / width + slope_y * yy / height
    background = background + rng.normal(0, 12, (height, width))
    if mode == "RGB":
        background = background[..., None] * rng.uniform(0.7, 1.3, 3)
    picture = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), mode)
    draw = ImageDraw.Draw(picture)
    r = rng.uniform(0.2, 0.35) * min(width, height)
    x, y = rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height
    shade = int(np.clip(255 - base + rng.normal(0, 20), 0, 255))
    fill = (shade, int(rng.uniform(0, 255)), 255 - shade) if mode == "RGB" else shade
    if shape == 0:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == 1:
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    return picture.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def _shapes(
    root: Path,
    classes=("circle", "square"),
    per_class: int = 80,
    mode: str = "L",
    sizes=((25, 25),),
    seed: int = 0,
) -> Path:
    """A small real-looking image folder `root/<class>/<i>.png|jpg`: one shape per class
    (circle, square, triangle), half PNG and half JPEG, of the given sizes; in RGB every
    fourth JPEG is stored turned and tagged with EXIF orientation 6."""
    rng = np.random.default_rng(seed)
    for shape, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            picture = _shape_picture(rng, shape, sizes[rng.integers(len(sizes))], mode)
            if i % 2 == 0:
                picture.save(root / name / f"{i}.png")
            elif mode == "RGB" and i % 4 == 1:
                exif = Image.Exif()
                exif[0x0112] = 6  # "rotate 90° clockwise to display"
                turned = picture.transpose(Image.Transpose.ROTATE_90)
                turned.save(root / name / f"{i}.jpg", quality=85, exif=exif)
            else:
                picture.save(root / name / f"{i}.jpg", quality=85)
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
def make_shapes():
    return _shapes


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
def exports(digits_checkpoint, tmp_path_factory) -> dict[str, str]:
    """The untrained digits checkpoint exported to ONNX and TorchScript (no training), for
    tests that read them (package them, copy them) and never change them."""
    from toolkit.variants.export import export_checkpoint

    out = tmp_path_factory.mktemp("exports")
    return {r.format: r.path for r in export_checkpoint(digits_checkpoint, out)}


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


def _linear_onnx(path: Path, info: ArtifactInfo | None = None) -> Path:
    """A tiny ONNX classifier made by hand (1×16×16 in, 10 scores out, no exporter run),
    carrying `info` (default: digits metadata)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from toolkit.artifacts.onnx import write_info

    weights = np.random.default_rng(0).standard_normal((256, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    write_info(path, info or _info("simplenet", 1, 16, 10, DataSource(dataset="digits")))
    return path


@pytest.fixture(scope="session")
def make_linear_onnx():
    return _linear_onnx


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


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """`with interrupt_after_epoch(N):` training inside is interrupted (as by Ctrl-C) right
    after it saves epoch N's checkpoints; outside it, training runs as usual."""
    from toolkit.training import trainer as trainer_module

    save = trainer_module.Trainer._save

    @contextlib.contextmanager
    def interrupting(epoch: int):
        def save_then_interrupt(self, improved):
            save(self, improved)
            if self.epoch == epoch:
                raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(trainer_module.Trainer, "_save", save_then_interrupt)
            yield

    return interrupting
