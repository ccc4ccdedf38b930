"""Export to ONNX and TorchScript, the parity gate, and artifact metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from toolkit.artifacts import open_runner
from toolkit.artifacts import read_info as read_artifact_info
from toolkit.artifacts.checkpoint import EagerRunner
from toolkit.errors import DlkitError
from toolkit.training.models import BACKBONES
from toolkit.variants.export import export_model
from toolkit.variants.parity import parity_batches, verify_parity


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simplenet", "smallresnet", *BACKBONES])
def test_every_family_exports_to_both_formats_and_passes_parity(name, tmp_path, make_model):
    model, info = make_model(name, 3, 32, 5)
    results = export_model(model, info, tmp_path, name)
    assert [r.format for r in results] == ["onnx", "torchscript"]
    for r in results:
        assert r.kept and r.parity.passed, (r.format, r.parity.summary())
        assert r.parity.batch_sizes == [1, 7] and r.parity.samples == "random"
    # A plain ONNX Runtime session, no dlkit: dynamic batch, input/output names.
    session = ort.InferenceSession(results[0].path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    with torch.no_grad():
        for batch in (1, 3, 17):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
            out = session.run(None, {"input": x})[0]
            assert out.shape == (batch, 5)
            np.testing.assert_allclose(
                out, model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-3
            )
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny digits checkpoint exported to both formats (CLI, --json)."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    out = tmp_path_factory.mktemp("export")
    args = ["export", tiny_run["best_checkpoint"], "--out", str(out), "--json"]
    result = json.loads(CliRunner().invoke(cli, args, catch_exceptions=False).stdout)
    return {a["format"]: a for a in result["artifacts"]}


@pytest.mark.slow
def test_cli_export_json_and_single_file(exported):
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".torchscript.pt")):
        artifact = exported[fmt]
        assert artifact["path"].endswith(suffix) and Path(artifact["path"]).is_file()
        parity = artifact["parity"]
        assert parity["passed"] and parity["samples"] == "validation"
        assert set(parity) >= {"max_abs_err", "max_rel_err", "cosine", "top1_agreement", "passed"}
    folder = Path(exported["onnx"]["path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["best.onnx", "best.torchscript.pt"]
    onnx.checker.check_model(exported["onnx"]["path"])


@pytest.mark.slow
def test_eval_is_the_same_on_every_artifact(dlkit, tiny_run, exported):
    accuracy = dlkit.json("eval", tiny_run["best_checkpoint"])["accuracy"]
    for fmt in ("onnx", "torchscript"):
        assert dlkit.json("eval", exported[fmt]["path"])["accuracy"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_metadata_round_trips(tiny_run, exported):
    from toolkit.files import sha256_file

    source = read_artifact_info(tiny_run["best_checkpoint"])
    for fmt in ("onnx", "torchscript"):
        info = read_artifact_info(exported[fmt]["path"])
        assert info.format == fmt and info.precision == "fp32"
        assert info.source_sha256 == sha256_file(tiny_run["best_checkpoint"])
        assert info.source_checkpoint == tiny_run["best_checkpoint"]
        assert (info.classes, info.preprocessing, info.model, info.source) == (
            source.classes, source.preprocessing, source.model, source.source,
        )  # fmt: skip


@pytest.mark.slow
def test_torchscript_loads_without_dlkit(exported, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "sys.modules['toolkit'] = None\n"  # dlkit cannot be imported
        f"m = torch.jit.load({exported['torchscript']['path']!r})\n"
        "print(tuple(m(torch.zeros(3, 1, 16, 16)).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(3, 10)"


def test_tampered_artifact_fails_the_gate(tmp_path, make_model):
    model, info = make_model("smallresnet", 3, 32, 5)
    [result] = export_model(model, info, tmp_path, "m", formats=("onnx",))
    proto = onnx.load(result.path)
    weight = next(t for t in proto.graph.initializer if t.dims and len(t.dims) == 2)
    array = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(proto, tmp_path / "tampered.onnx")
    batches, kind = parity_batches(info)
    reference = EagerRunner(model=model, info=info)
    report = verify_parity(
        reference, open_runner(tmp_path / "tampered.onnx"), batches, samples=kind
    )
    assert not report.passed and report.failed_elements > 0
    assert "differ by more than" in report.summary()


class NoisyNet(nn.Module):
    """A model whose outputs change from call to call: no export of it can be verified."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1)) + torch.rand_like(self.fc.bias)


def test_failed_parity_keeps_nothing_and_says_by_how_much(tmp_path, make_info):
    info = make_info("noisy", size=8, classes=4)
    results = export_model(NoisyNet(), info, tmp_path, "noisy")
    assert [r.kept for r in results] == [False, False]
    assert all(r.parity.max_abs_err > 1e-3 for r in results)
    assert list(tmp_path.iterdir()) == []


class EigNet(nn.Module):
    """Uses an op ONNX has no function for."""

    def forward(self, x):
        pairs = x.flatten(2)[:, 0, :4].reshape(-1, 2, 2)
        return torch.linalg.eigvals(pairs).real.reshape(x.shape[0], -1)


def test_unexportable_model_names_the_failure_and_suggests_the_other_format(tmp_path, make_info):
    info = make_info("eignet", size=8, classes=2)
    with pytest.raises(
        DlkitError, match=r"ONNX export of eignet failed: .*aten\.linalg_eig.*--torchscript"
    ):
        export_model(EigNet(), info, tmp_path, "m", formats=("onnx",))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_refuses_to_overwrite_and_static_batch(dlkit, tiny_run, exported, tmp_path):
    folder = Path(exported["onnx"]["path"]).parent
    result = dlkit("export", tiny_run["best_checkpoint"], "--out", folder, "--onnx", expect=1)
    assert "exists; pass --force" in result.output
    out = dlkit.json(
        "export", tiny_run["best_checkpoint"], "--out", tmp_path, "--onnx", "--static-batch", "4"
    )
    [artifact] = out["artifacts"]
    assert artifact["parity"]["batch_sizes"] == [4]
    session = ort.InferenceSession(artifact["path"], providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 1, 16, 16]
    with pytest.raises(DlkitError, match="fixed batch of 4"):
        open_runner(artifact["path"])(np.zeros((2, 1, 16, 16), np.float32))


def test_strict_tolerances_fail_on_the_cli_with_exit_1(dlkit, tmp_path, make_checkpoint):
    make_checkpoint(tmp_path / "m.pt", "smallresnet", 1, 16, 3)
    result = dlkit(
        "export", tmp_path / "m.pt", "--onnx", "--atol", "0", "--rtol", "0", "--json", expect=1
    )
    assert "failed the parity check" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_unwritable_output_folder(dlkit, digits_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = dlkit("export", digits_checkpoint, "--out", blocker / "sub", expect=1)
    assert result.output.startswith("Error: cannot create folder")


@pytest.mark.parametrize(
    "args",
    [
        ["--opset", "1"],
        ["--atol", "nan"],
        ["--rtol", "nan"],
        ["--atol", "-1"],
        ["--static-batch", "0"],
    ],
)
def test_numeric_options_are_checked_where_they_are_parsed(
    dlkit, digits_checkpoint, tmp_path, args
):
    result = dlkit("export", digits_checkpoint, "--out", tmp_path, *args, expect=2)
    assert "Invalid value" in result.output and args[0] in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_reported_opset_is_the_files(dlkit, digits_checkpoint, tmp_path):
    out = dlkit.json("export", digits_checkpoint, "--onnx", "--out", tmp_path, "--opset", "20")
    [artifact] = out["artifacts"]
    assert artifact["opset"] == onnx.load(artifact["path"]).opset_import[0].version


def test_parity_falls_back_to_random_inputs_with_a_warning(make_info, caplog):
    from toolkit.artifacts.metadata import DataSource

    info = make_info(source=DataSource(dataset=None, data="/gone/photos"))
    _, kind = parity_batches(info)
    assert kind == "random"
    assert "/gone/photos" in caplog.text and "random inputs" in caplog.text


def test_both_formats_write_the_missing_one_and_keep_the_existing_one(
    dlkit, tmp_path, make_checkpoint
):
    checkpoint = make_checkpoint(tmp_path / "a" / "m.pt", "simplenet", 1, 8, 2)
    out = tmp_path / "out"
    dlkit("export", checkpoint, "--onnx", "--out", out)
    onnx_bytes = (out / "m.onnx").read_bytes()
    result = dlkit("export", checkpoint, "--out", out)
    assert "exists, kept (--force replaces it); parity ok" in result.output
    assert (out / "m.onnx").read_bytes() == onnx_bytes and (out / "m.torchscript.pt").is_file()
    both = dlkit("export", checkpoint, "--out", out, expect=1).output
    assert "m.onnx and " in both and "m.torchscript.pt exist; pass --force" in both

    # An existing file made from other weights is not kept beside a new export of these.
    from toolkit.artifacts.checkpoint import read_checkpoint_file, save_checkpoint

    state = read_checkpoint_file(checkpoint)
    state["model_state"] = {k: v + 0.5 for k, v in state["model_state"].items()}
    other = tmp_path / "b" / "m.pt"
    other.parent.mkdir()
    save_checkpoint(state, other)
    (out / "m.torchscript.pt").unlink()
    stale = dlkit("export", other, "--out", out, expect=1).output
    assert "m.onnx exists and does not match this model" in stale
    assert not (out / "m.torchscript.pt").exists()
