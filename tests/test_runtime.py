"""Runners: one interface over eager checkpoints, TorchScript and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_export import info_for
from toolkit.errors import DlkitError
from toolkit.export import export_model
from toolkit.models import create_model
from toolkit.runtime import EagerRunner, OnnxRunner, TorchScriptRunner, open_runner
from toolkit.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A small RGB smallresnet as a checkpoint, ONNX and TorchScript file."""
    folder = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model, spec = create_model("smallresnet", 4, 3, 16)
    info = info_for("smallresnet", channels=3, size=16, classes=4)
    info = info.derive(model=spec)
    save_checkpoint({"info": info.to_dict(), "model_state": model.state_dict()}, folder / "m.pt")
    export_model(model, info, folder, "m")
    return {
        "checkpoint": folder / "m.pt",
        "onnx": folder / "m.onnx",
        "torchscript": folder / "m.torchscript.pt",
    }


@pytest.fixture
def batch():
    return np.random.default_rng(0).standard_normal((5, 3, 16, 16), dtype=np.float32)


def test_every_runner_gives_the_same_logits_and_metadata(artifacts, batch):
    runners = {fmt: open_runner(path) for fmt, path in artifacts.items()}
    assert isinstance(runners["checkpoint"], EagerRunner)
    assert isinstance(runners["torchscript"], TorchScriptRunner)
    assert isinstance(runners["onnx"], OnnxRunner)
    reference = runners["checkpoint"](batch)
    assert reference.shape == (5, 4) and reference.dtype == np.float32
    for fmt, runner in runners.items():
        np.testing.assert_allclose(runner(batch), reference, atol=1e-4, rtol=1e-3, err_msg=fmt)
        assert runner.info.classes == ("c0", "c1", "c2", "c3")
        assert runner.info.format == fmt


def test_eager_autocast_and_channels_last(artifacts, batch):
    reference = open_runner(artifacts["checkpoint"])(batch)
    fast = open_runner(artifacts["checkpoint"], autocast="bf16", channels_last=True)
    out = fast(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=0.1)
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.8


def test_onnx_runner_options(artifacts, batch):
    reference = OnnxRunner(artifacts["onnx"])(batch)
    plain = OnnxRunner(artifacts["onnx"], threads=1, optimization="disable")
    np.testing.assert_allclose(plain(batch), reference, atol=1e-5)
    assert plain.providers == ["CPUExecutionProvider"]
    with pytest.raises(DlkitError, match="graph optimization"):
        OnnxRunner(artifacts["onnx"], optimization="max")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_detected_not_assumed(artifacts):
    with pytest.raises(DlkitError, match="--device cpu"):
        open_runner(artifacts["onnx"], device="cuda")
    with pytest.raises(DlkitError, match="CUDA is not available"):
        open_runner(artifacts["torchscript"], device="cuda")


@pytest.mark.parametrize("fmt", ["checkpoint", "onnx", "torchscript"])
@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((2, 1, 16, 16), np.float32, r"expects a batch of shape \(N, 3, 16, 16\) \(3 channels"),
        ((2, 3, 32, 32), np.float32, r"16×16 pixels\); got \(2, 3, 32, 32\)"),
        ((3, 16, 16), np.float32, "expects a batch of shape"),
        ((2, 3, 16, 16), np.uint8, "expects float32 input after preprocessing; got uint8"),
    ],
)
def test_wrong_inputs_are_refused_clearly(artifacts, fmt, shape, dtype, message):
    runner = open_runner(artifacts[fmt])
    with pytest.raises(DlkitError, match=message):
        runner(np.zeros(shape, dtype))


@pytest.mark.parametrize("name", ["broken.onnx", "broken.pt", "broken.bin"])
def test_corrupt_files_are_refused(dlkit, tmp_path, artifacts, name):
    source = artifacts["onnx"] if name.endswith(".onnx") else artifacts["torchscript"]
    path = tmp_path / name
    path.write_bytes(source.read_bytes()[:2000] if name != "broken.bin" else b"\x00garbage")
    result = dlkit("eval", path, expect=1)
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert str(path) in result.output


def test_files_without_metadata_and_unknown_options(tmp_path, artifacts):
    import onnx

    proto = onnx.load(artifacts["onnx"])
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(DlkitError, match="carries no dlkit metadata"):
        open_runner(tmp_path / "bare.onnx")
    with pytest.raises(DlkitError, match="do not take that option"):
        open_runner(artifacts["onnx"], autocast="bf16")
