"""What a classifier must be (`toolkit.artifacts.contract`): files that load and run but are no
classifier are refused by `package`, `eval`, `predict` and `quantize` with one `Error:` line,
before anything is written or any accuracy is reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from toolkit.artifacts.torchscript import EXTRA_FILE, jit_deprecation_silenced, read_info


@pytest.fixture(scope="module")
def exports(digits_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The untrained digits simplenet as ONNX and TorchScript (real validation data)."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    out = tmp_path_factory.mktemp("contract")
    args = ["export", str(digits_checkpoint), "--out", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"onnx": out / "digits.onnx", "torchscript": out / "digits.torchscript.pt"}


def _through(model: onnx.ModelProto, op: str, domain: str = "", **attrs) -> str:
    """Route the graph's output through one more node; returns the old output's name."""
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["pre" if o == old else o for o in node.output]
    inputs = ["pre", *attrs.pop("inputs", [])]
    model.graph.node.append(helper.make_node(op, inputs, [old], domain=domain, **attrs))
    return old


def custom_domain(m):
    _through(m, "Scramble", "com.evil")
    m.opset_import.append(helper.make_opsetid("com.evil", 1))


def custom_in_a_branch(m):  # hidden in an If's subgraph, on the branch never taken
    old = _through(m, "Identity")
    m.graph.node.pop()
    then = helper.make_graph(
        [helper.make_node("Scramble", ["pre"], ["a"], domain="com.evil")], "then", [],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Identity", ["pre"], ["b"])], "else", [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
    )  # fmt: skip
    m.graph.initializer.append(numpy_helper.from_array(np.array(False), "never"))
    m.graph.node.append(
        helper.make_node("If", ["never"], [old], then_branch=then, else_branch=other)
    )
    m.opset_import.append(helper.make_opsetid("com.evil", 1))


def huge_image(m):
    for dim in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 60_000


def huge_batch(m):
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 1 << 20


def missing_weights(m):
    max(m.graph.initializer, key=lambda t: len(t.raw_data)).ClearField("raw_data")


def nan_scores(m):
    m.graph.initializer.append(numpy_helper.from_array(np.array([np.nan], np.float32), "nan"))
    _through(m, "Mul", inputs=["nan"])


def log_scores(m):  # NaN only where a logit is negative: real inputs find it
    _through(m, "Log")


def int64_scores(m):
    _through(m, "Cast", to=TensorProto.INT64)
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64


def double_scores(m):
    _through(m, "Cast", to=TensorProto.DOUBLE)
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE


def two_outputs(m):
    old = m.graph.output[0].name
    m.graph.node.append(helper.make_node("ArgMax", [old], ["top"], axis=1, keepdims=0))
    m.graph.output.insert(0, helper.make_tensor_value_info("top", TensorProto.INT64, ["batch"]))


ONNX_CASES = {
    custom_domain: r"operators from a custom domain \(Scramble \(domain 'com\.evil'\)\)",
    custom_in_a_branch: r"operators from a custom domain \(Scramble \(domain 'com\.evil'\)\)",
    huge_image: r"declares its input as \(\?, 1, 60000, 60000\), but its metadata says "
    r"\(N, 1, 16, 16\)",
    huge_batch: r"declares its input as \(1048576, 1, 16, 16\)",
    missing_weights: r"the weight '.*' has no data",
    nan_scores: r"answers NaN or infinite scores for ([18]) of \1 images",
    log_scores: r"answers NaN or infinite scores for [1-8] of [18] images",
    int64_scores: r"answers INT64 values; a classifier answers float32 scores",
    double_scores: r"answers DOUBLE values",
    two_outputs: r"has 1 inputs and 2 outputs; a classifier has one of each",
}


# What `package` says first for these (its reading of the graph for the Triton config).
PACKAGE_MESSAGES = {
    huge_batch: r"only the batch dimension may be dynamic; got \(1048576, 1, 16, 16\)",
    two_outputs: r"expected one input and one output, found 1 and 2",
}


@pytest.mark.parametrize("mutate", ONNX_CASES, ids=lambda f: f.__name__)
def test_onnx_files_that_are_no_classifier_are_refused(dlkit, exports, tmp_path, mutate):
    model = onnx.load(str(exports["onnx"]))
    mutate(model)
    path = tmp_path / f"{mutate.__name__}.onnx"
    onnx.save(model, str(path))
    pattern = ONNX_CASES[mutate]
    image = tmp_path / "digit.png"
    _digit_png(image)
    for args in (
        ("package", path, "--repo", tmp_path / "repo", "--backend", "python"),
        ("eval", path),
        ("predict", path, image),
        ("quantize", path, "--mode", "dynamic", "--out", tmp_path / "q.onnx"),
    ):
        result = dlkit(*args, expect=1)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, args
        assert "Traceback" not in result.output and "accuracy" not in result.stdout
        expected = PACKAGE_MESSAGES.get(mutate, pattern) if args[0] == "package" else pattern
        assert _search(expected, result.output), (args[0], result.output)
    assert not (tmp_path / "repo" / mutate.__name__).exists()
    assert not (tmp_path / "q.onnx").exists()


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def _digit_png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(path)


class _Answer(torch.nn.Module):
    def __init__(self, inner, kind: str):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        y = self.inner(x)
        if self.kind == "tuple":
            return y, y
        if self.kind == "list":
            return [y]
        if self.kind == "dict":
            return {"logits": y}
        if self.kind == "int64":
            return y.to(torch.int64)
        if self.kind == "float64":
            return y.double()
        if self.kind == "nan":
            return y * float("nan")
        if self.kind == "inf":
            return y / 0.0
        if self.kind == "five":
            return y[:, :5]
        return y


TORCHSCRIPT_CASES = {
    "tuple": r"answers 2 tensors; a classifier answers one",
    "list": r"answers a list, not a tensor of scores",
    "dict": r"answers a dict, not a tensor of scores",
    "int64": r"answers int64 values; a classifier answers float32 scores",
    "float64": r"answers float64 values",
    "nan": r"answers NaN or infinite scores",
    "inf": r"answers NaN or infinite scores",
    "five": r"answers shape \(8, 5\) for 8 images; its metadata lists 10 classes",
}


@pytest.mark.parametrize("kind", TORCHSCRIPT_CASES)
def test_torchscript_files_that_are_no_classifier_are_refused(dlkit, exports, tmp_path, kind):
    info = read_info(exports["torchscript"])
    with jit_deprecation_silenced():
        inner = torch.jit.load(str(exports["torchscript"]))
        traced = torch.jit.trace(
            _Answer(inner, kind).eval(), torch.zeros(2, 1, 16, 16), check_trace=False, strict=False
        )
        path = tmp_path / f"{kind}.torchscript.pt"
        torch.jit.save(
            torch.jit.freeze(traced), str(path), _extra_files={EXTRA_FILE: info.to_json()}
        )
    for args in (
        ("package", path, "--repo", tmp_path / "repo", "--backend", "python"),
        ("eval", path),
    ):
        result = dlkit(*args, expect=1)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, args
        # package's own check on zeros may see the shape first; eval sees what the contract says
        if args[0] == "eval" or kind in ("int64", "float64", "nan", "inf"):
            assert _search(TORCHSCRIPT_CASES[kind], result.output), (args[0], result.output)
    assert not (tmp_path / "repo" / kind).exists()


def test_what_is_a_classifier_passes(dlkit, exports, tmp_path):
    """dlkit's own exports, and an ONNX file using an operator of ONNX Runtime's contrib domain
    (com.microsoft, which Triton's ONNX Runtime has), are packaged and evaluated."""
    model = onnx.load(str(exports["onnx"]))
    _through(model, "Gelu", "com.microsoft")
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    contrib = tmp_path / "contrib.onnx"
    onnx.save(model, str(contrib))
    for name, path in {"o": exports["onnx"], "t": exports["torchscript"], "c": contrib}.items():
        dlkit("package", path, "--repo", tmp_path / "repo", "--backend", "python", "--name", name)
        assert 0 <= dlkit.json("eval", path)["accuracy"] <= 1


def test_every_runner_answer_meets_the_contract(exports, tmp_path):
    """`predict_dataset`, behind every accuracy dlkit reports, checks any runner's logits: a
    model that opens and runs, answering NaN, gives no figures."""
    from toolkit.artifacts import open_runner
    from toolkit.data import load_split
    from toolkit.errors import DlkitError
    from toolkit.evaluate import predict_dataset

    runner = open_runner(exports["onnx"])
    val, _ = load_split(runner.info.source, runner.info.preprocessing, "val")
    assert predict_dataset(runner, val)[0].shape == (len(val), 10)
    model = onnx.load(str(exports["onnx"]))
    nan_scores(model)
    onnx.save(model, str(tmp_path / "nan.onnx"))
    with pytest.raises(DlkitError, match=f"NaN or infinite scores for {len(val)} of {len(val)}"):
        predict_dataset(open_runner(tmp_path / "nan.onnx"), val)


def test_a_fixed_batch_nothing_can_allocate_is_refused_not_attempted(dlkit, exports, tmp_path):
    """Metadata claiming a fixed batch of 10^9 images: the check's batch would need 1 TB."""
    import shutil

    from toolkit.artifacts.onnx import read_info as onnx_info
    from toolkit.artifacts.onnx import write_info

    crafted = tmp_path / "crafted.onnx"
    shutil.copyfile(exports["onnx"], crafted)
    write_info(crafted, onnx_info(crafted).derive(static_batch=10**9))
    result = dlkit("eval", crafted, expect=1)
    assert (
        f"{crafted}: its metadata gives a fixed batch of 1000000000 images of 1x16x16"
        in result.output
    )
