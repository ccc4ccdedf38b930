"""One deadline for running model files from outside: a file whose loading or forward never
ends, or whose quantization takes exponential time, ends every command with one `Error:` line
once `--model-timeout` has passed, and leaves nothing behind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from toolkit.artifacts.isolated import IsolatedRunner, model_timeout, run_isolated, timeout_scope
from toolkit.artifacts.metadata import DataSource
from toolkit.artifacts.onnx import write_info
from toolkit.artifacts.torchscript import EXTRA_FILE, jit_deprecation_silenced
from toolkit.errors import DlkitError

LIMIT = "4"  # seconds: far more than these tiny files need to load and answer, far less than never


class _EndlessForward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 1
        while n > 0:  # only allowed operators: the code check cannot tell it never ends
            n = n + 1
        return self.fc(x.flatten(1))


class _EndlessLoad(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    @torch.jit.export
    def __getstate__(self) -> int:
        return 1

    @torch.jit.export
    def __setstate__(self, state: int) -> None:  # torch.jit.load runs this
        n = state
        while n > 0:
            n = n + 1


@pytest.fixture
def endless(tmp_path, make_info) -> dict[str, str]:
    info = make_info("simplenet", 1, 16, 10, DataSource(dataset="digits"))
    paths = {}
    with jit_deprecation_silenced():
        for name, cls in (("forward", _EndlessForward), ("setstate", _EndlessLoad)):
            path = tmp_path / f"endless-{name}.torchscript.pt"
            torch.jit.save(
                torch.jit.script(cls()), str(path), _extra_files={EXTRA_FILE: info.to_json()}
            )
            paths[name] = str(path)
    return paths


@pytest.mark.parametrize("where", ["forward", "setstate"])
def test_eval_predict_bench_and_package_stop_a_model_that_never_returns(
    where, endless, dlkit, digit_images, tmp_path
):
    path = endless[where]
    repo = tmp_path / "repo"
    for command in (
        ["eval", path],
        ["predict", path, digit_images[0]],
        ["bench", path, "--batch-sizes", "1", "--iters", "5"],
        ["package", path, "--repo", repo],
    ):
        result = dlkit(*command, "--model-timeout", LIMIT, expect=1)
        assert result.output.strip().splitlines()[-1].startswith("Error:"), result.output
        assert f"did not finish within {LIMIT} s" in result.output, (command, result.output)
    assert not repo.exists()


def _nested_ifs(depth: int) -> onnx.ModelProto:
    """input -> logits through `depth` Ifs nested in each other's then-branch: tiny to store
    and to run, exponential for ONNX Runtime's quantization pre-processing."""

    def branch(level: int, name: str) -> onnx.GraphProto:
        out = f"{name}_out"
        if level == 0:
            nodes = [
                helper.make_node("Flatten", ["input"], [f"{name}_flat"], axis=1),
                helper.make_node("MatMul", [f"{name}_flat", "W"], [out]),
            ]
        else:
            then, other = branch(level - 1, f"{name}t"), branch(0, f"{name}e")
            nodes = [helper.make_node("If", ["cond"], [out], then_branch=then, else_branch=other)]
        value = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        return helper.make_graph(nodes, name, [], [value])

    top = branch(depth, "g")
    top.node[-1].output[0] = "logits"
    cond = numpy_helper.from_array(np.array(True))
    weights = np.random.default_rng(0).standard_normal((256, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["cond"], value=cond), *top.node],
        "nested",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_quantize_stops_exponential_pre_processing_and_leaves_nothing(dlkit, tmp_path, make_info):
    path = tmp_path / "nested.onnx"
    onnx.save(_nested_ifs(20), path)
    write_info(path, make_info("simplenet", 1, 16, 10, DataSource(dataset="digits")))
    assert dlkit.json("eval", path)["num_samples"] > 0  # it loads and runs quickly
    result = dlkit("quantize", path, "--mode", "dynamic", "--model-timeout", LIMIT, expect=1)
    assert f"quantizing it did not finish within {LIMIT} s" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nested.onnx"]


def test_the_limit_comes_from_the_option_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv("DLKIT_MODEL_TIMEOUT", raising=False)
    assert model_timeout() == 120
    monkeypatch.setenv("DLKIT_MODEL_TIMEOUT", "7.5")
    assert model_timeout() == 7.5
    with timeout_scope(3):
        assert model_timeout() == 3
    assert model_timeout(2) == 2
    for bad in ("0", "nan", "-1", "soon"):
        monkeypatch.setenv("DLKIT_MODEL_TIMEOUT", bad)
        with pytest.raises(DlkitError, match=r"DLKIT_MODEL_TIMEOUT|between 0"):
            model_timeout()


def test_a_child_that_dies_or_fails_is_one_clear_error(endless):
    with pytest.raises(DlkitError, match=r"ended during .*exit status -9"):
        run_isolated(_kill_myself, what="m.onnx", doing="quantizing it")
    with pytest.raises(DlkitError, match="ZeroDivisionError"):
        run_isolated(_divide, 1, 0, what="m.onnx", doing="quantizing it")
    assert run_isolated(_divide, 6, 3, what="m.onnx", doing="quantizing it") == 2


@pytest.mark.slow
def test_an_isolated_runner_answers_as_the_file_does(tiny_exports):
    from toolkit.artifacts import open_runner

    for fmt in ("onnx", "torchscript"):
        here, there = open_runner(tiny_exports[fmt]), IsolatedRunner(tiny_exports[fmt])
        try:
            shape = (3, *here.info.preprocessing.input_shape)
            batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            np.testing.assert_allclose(there(batch), here(batch), rtol=1e-5, atol=1e-5)
            assert there.info == here.info
            assert there.timed_step(batch)() > 0
            assert there.peak_bytes() > 0
        finally:
            there.close()


def _kill_myself() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _divide(a: int, b: int) -> float:
    return a / b
