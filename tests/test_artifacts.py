"""Artifacts: one interface (metadata, runners) over checkpoints, TorchScript and ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from toolkit.artifacts import detect_format, open_runner, read_info
from toolkit.artifacts.checkpoint import EagerRunner, save_checkpoint
from toolkit.artifacts.onnx import OnnxRunner
from toolkit.artifacts.torchscript import TorchScriptRunner
from toolkit.errors import DlkitError
from toolkit.variants.export import export_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, make_model):
    """A small RGB smallresnet as a checkpoint, ONNX and TorchScript file."""
    folder = tmp_path_factory.mktemp("artifacts")
    model, info = make_model("smallresnet", 3, 16, 4)
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
        ((0, 3, 16, 16), np.float32, "empty batch"),
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


@pytest.mark.parametrize("fmt", ["checkpoint", "onnx", "torchscript"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(artifacts, batch, fmt, bad):
    poisoned = batch.copy()
    poisoned[1, 2, 3, 4] = bad
    with pytest.raises(DlkitError, match="NaN or infinite"):
        open_runner(artifacts[fmt])(poisoned)


def test_formats_are_recognised_by_content(artifacts, tmp_path):
    for fmt, path in artifacts.items():
        renamed = tmp_path / f"{fmt}.bin"
        renamed.write_bytes(path.read_bytes())
        assert detect_format(renamed) == fmt
        assert read_info(renamed).classes == ("c0", "c1", "c2", "c3")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("classes"), "classes: missing"),
        (lambda d: d.update(classes=["a"]), "at least two classes"),
        (lambda d: d.update(classes=["a", "b\nc"]), "control characters"),
        (lambda d: d.update(classes=["a", "b\u2028c"]), "control characters"),
        (lambda d: d["preprocessing"].update(std=[0, 1, 1]), "std: .* positive numbers"),
        (lambda d: d["preprocessing"].update(image_size=10**6), "image_size: .* from 1 to 4096"),
        (lambda d: d.update(format="pickle"), "format 'pickle' is none dlkit knows"),
    ],
)
def test_malformed_metadata_is_one_clear_error(artifacts, tmp_path, edit, message):
    import onnx

    from toolkit.artifacts.onnx import METADATA_KEY

    proto = onnx.load(artifacts["onnx"])
    info = read_info(artifacts["onnx"]).to_dict()
    edit(info)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(info)
    onnx.save(proto, tmp_path / "bad.onnx")
    with pytest.raises(DlkitError, match=message):
        read_info(tmp_path / "bad.onnx")


def test_checkpoint_whose_weights_do_not_fit_its_metadata(artifacts, tmp_path):
    from toolkit.artifacts.checkpoint import load_checkpoint

    state = load_checkpoint(artifacts["checkpoint"]).state
    state["info"]["classes"] = ["a", "b", "c"]  # the model answers 4
    save_checkpoint(state, tmp_path / "wrong.pt")
    with pytest.raises(DlkitError, match=r"answers .*4.* outputs .* lists 3 classes"):
        open_runner(tmp_path / "wrong.pt")
    state["model_state"]["fc.weight"] = state["model_state"]["fc.weight"][:, :2]
    save_checkpoint(state, tmp_path / "shapes.pt")
    with pytest.raises(DlkitError, match="do not fit"):
        open_runner(tmp_path / "shapes.pt")
