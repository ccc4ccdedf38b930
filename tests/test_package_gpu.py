"""`dlkit package --device cuda`: KIND_GPU instance groups, the TensorRT accelerator of Triton's
onnxruntime backend (parsed back through Triton's config protobuf), the python backend's runner
on the GPU, and the refusals (KIND_CPU instances, formats other than ONNX, the python backend).
All of it is written and checked here, without a GPU; serving it is benchmarks/gpu_serving.sh's."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.choices import InstanceKind
from toolkit.errors import DlkitError
from toolkit.triton.configs import (
    ServingOptions,
    config_json,
    instance_kind,
    serving_options,
)


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_device_fixes_the_instance_kind():
    assert instance_kind(None, "auto") == InstanceKind.AUTO
    assert instance_kind(None, "cpu") == InstanceKind.CPU
    assert instance_kind("cuda", "auto") == InstanceKind.GPU
    assert instance_kind("cuda", "gpu") == InstanceKind.GPU
    assert instance_kind("cpu", "auto") == InstanceKind.CPU
    with pytest.raises(DlkitError, match="--device cuda serves on KIND_GPU instances; drop --kind"):
        instance_kind("cuda", "cpu")
    with pytest.raises(DlkitError, match="--device cpu serves on KIND_CPU"):
        instance_kind("cpu", "gpu")


def test_accelerators_are_refused_on_the_wrong_kind_of_instance():
    assert ServingOptions(kind=InstanceKind.GPU, accelerator="tensorrt").accelerator == "tensorrt"
    for kind in ("cpu", "auto"):
        with pytest.raises(DlkitError, match=r"runs on GPU instances.*--device cuda"):
            ServingOptions(kind=kind, accelerator="tensorrt")
    with pytest.raises(DlkitError, match=r"openvino runs on CPU instances, and these are KIND_GPU"):
        ServingOptions(kind="gpu", accelerator="openvino")
    assert ServingOptions(accelerator="openvino").accelerator == "openvino"  # as before


def test_device_cuda_writes_kind_gpu_and_the_tensorrt_accelerator(dlkit, exports, tmp_path):
    repo = tmp_path / "repo"
    result = dlkit.json(
        "package", exports["onnx"], "--repo", repo, "--device", "cuda", "--accelerator", "tensorrt"
    )
    assert result["models"][0]["platform"] == "onnxruntime_onnx"
    config = _parse(repo / "digits" / "config.pbtxt")
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_GPU)
    ]
    accelerators = config.optimization.execution_accelerators
    assert not accelerators.cpu_execution_accelerator
    [trt] = accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert trt.parameters["trt_engine_cache_path"].startswith("/")
    assert int(trt.parameters["max_workspace_size_bytes"]) >= 1 << 20
    # What tune and a new version read back, and what the repository API would be given.
    options = serving_options(config)
    assert (options.kind, options.accelerator) == (InstanceKind.GPU, "tensorrt")
    assert '"gpu_execution_accelerator"' in config_json(config)
    # The same options again make a new version without --replace-config.
    dlkit("package", exports["onnx"], "--repo", repo, "--device", "cuda", "--accelerator",
          "tensorrt")  # fmt: skip
    assert sorted(p.name for p in (repo / "digits").iterdir() if p.is_dir()) == ["1", "2"]


def test_device_cuda_without_an_accelerator_writes_plain_gpu_instances(dlkit, exports, tmp_path):
    repo = tmp_path / "repo"
    dlkit("package", exports["onnx"], "--repo", repo, "--device", "cuda", "--instances", "2")
    config = _parse(repo / "digits" / "config.pbtxt")
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_GPU)
    ]
    assert not config.HasField("optimization")
    dlkit("package", exports["onnx"], "--repo", tmp_path / "cpu", "--device", "cpu")
    config = _parse(tmp_path / "cpu" / "digits" / "config.pbtxt")
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize(
    ("fmt", "args", "message"),
    [
        ("onnx", ["--accelerator", "tensorrt"], "runs on GPU instances, and these are KIND_AUTO"),
        ("onnx", ["--accelerator", "tensorrt", "--kind", "cpu"], "these are KIND_CPU"),
        ("onnx", ["--accelerator", "tensorrt", "--device", "cpu"], "these are KIND_CPU"),
        ("onnx", ["--device", "cuda", "--kind", "cpu"], "drop --kind cpu"),
        ("onnx", ["--device", "cuda", "--accelerator", "openvino"], "runs on CPU instances"),
        (
            "onnx",
            ["--device", "cuda", "--accelerator", "tensorrt", "--backend", "python"],
            "applies to Triton's native onnxruntime backend",
        ),
        (
            "torchscript",
            ["--device", "cuda", "--accelerator", "tensorrt"],
            "does not apply to torchscript models on Triton's pytorch backend",
        ),
    ],
)
def test_refusals_name_the_fix_and_write_nothing(dlkit, exports, tmp_path, fmt, args, message):
    repo = tmp_path / "repo"
    result = dlkit("package", exports[fmt], "--repo", repo, *args, expect=1)
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message in line
    assert not repo.exists() or [p.name for p in repo.iterdir()] in ([], [".dlkit-lock"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_python_backend_on_the_gpu_runs_the_variant_there(dlkit, exports, tmp_path, fmt):
    repo = tmp_path / "repo"
    dlkit("package", exports[fmt], "--repo", repo, "--device", "cuda", "--backend", "python")
    config = _parse(repo / "digits" / "config.pbtxt")
    assert config.backend == "python"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    runner = (repo / "digits" / "1" / "runner.py").read_text()
    compile(runner, "runner.py", "exec")  # self-contained and valid
    if fmt == "onnx":  # the CUDA provider, IO binding, and no silent CPU fall-back
        assert "CUDAExecutionProvider" in runner and "run_with_iobinding" in runner
        assert "could not start its CUDA provider" in runner
    else:  # moved once: pinned host buffers reused between calls
        assert "pin_memory=True" in runner and "map_location=device" in runner


@pytest.mark.parametrize("gpu", [False, pytest.param(True, marks=pytest.mark.cuda)])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_python_backend_runner_answers_as_dlkit_does(dlkit, exports, tmp_path, fmt, gpu):
    # runner.py as Triton's stub loads it, fed read-only views (as the stub's shared memory
    # is) of batches of changing size, each answer held while the next ones run.
    import importlib.util

    import numpy as np

    from toolkit.artifacts import open_runner
    from toolkit.artifacts.torchscript import jit_deprecation_silenced

    repo = tmp_path / "repo"
    device = "cuda" if gpu else "cpu"
    dlkit("package", exports[fmt], "--repo", repo, "--device", device, "--backend", "python")
    version = repo / "digits" / "1"
    spec = importlib.util.spec_from_file_location("stub_runner", version / "runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    artifact = next(
        p for p in version.iterdir() if p.name.startswith("model.") and p.suffix != ".py"
    )
    params = {"intra_op_thread_count": "1", "inter_op_thread_count": "1"}
    with jit_deprecation_silenced():  # Triton's stub does not turn warnings into errors
        run = module.make_runner(str(artifact), params, gpu, 0)
    reference = open_runner(exports[fmt], trust=True)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 1, 16, 16), dtype=np.float32) for n in (3, 8, 1)]
    held = []
    for batch in batches:
        batch.flags.writeable = False
        held.append(run(batch))
    for batch, out in zip(batches, held, strict=True):
        assert out.dtype == np.float32 and out.shape == (len(batch), 10)
        np.testing.assert_allclose(out, reference(batch.copy()), atol=1e-3, rtol=1e-3)
