"""ONNX Runtime on the GPU: the provider lists and options built for it (checked anywhere), the
refusal where no CUDA provider can start, and, marked `cuda`, the IO-bound runner on a real GPU
(fp32, fp16 with and without fp32 inputs and outputs, CUDA graphs, the device-only call)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from toolkit.artifacts import open_runner, plugin
from toolkit.artifacts.onnx import OnnxRunner
from toolkit.artifacts.onnx_cuda import (
    CPU,
    CUDA,
    TENSORRT,
    TensorRTSettings,
    cuda_options,
    element_type,
    execution_providers,
)
from toolkit.errors import DlkitError

SIZE, CLASSES, BATCH = 16, 4, 4


@pytest.fixture(scope="module")
def onnx_files(make_model, tmp_path_factory) -> dict[str, str]:
    """smallresnet (random weights) as fp32 ONNX, fp16 with fp32 inputs and outputs (what
    `dlkit quantize --mode fp16` writes), and fp16 throughout."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from toolkit.artifacts.onnx import export, write_info
    from toolkit.artifacts.onnx_quantize import quantize_onnx
    from toolkit.choices import QuantizeMode

    folder = tmp_path_factory.mktemp("onnx-cuda")
    model, info = make_model("smallresnet", 3, SIZE, CLASSES)
    paths = {name: folder / f"{name}.onnx" for name in ("fp32", "fp16", "fp16-io")}
    export(model.eval(), info, paths["fp32"], torch.randn(2, 3, SIZE, SIZE))
    quantize_onnx(paths["fp32"], paths["fp16"], QuantizeMode.FP16, None)
    whole = convert_float_to_float16(onnx.load(str(paths["fp32"])), keep_io_types=False)
    onnx.save(whole, str(paths["fp16-io"]))
    write_info(paths["fp16"], info)
    write_info(paths["fp16-io"], info)
    return {name: str(path) for name, path in paths.items()}


# ------------------------------------------------------------------------ options, anywhere


def test_cuda_options_name_the_search_and_graphs():
    assert cuda_options() == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }
    graph = cuda_options(1, "HEURISTIC", cuda_graph=True)
    assert graph["enable_cuda_graph"] == "1" and graph["device_id"] == "1"
    assert graph["cudnn_conv_algo_search"] == "HEURISTIC"
    with pytest.raises(DlkitError, match="EXHAUSTIVE, HEURISTIC, DEFAULT"):
        cuda_options(conv_algo_search="FASTEST")


def test_providers_are_cuda_then_cpu_and_tensorrt_first_when_asked():
    available = [TENSORRT, CUDA, CPU]
    assert [p for p, _ in execution_providers(available)] == [CUDA, CPU]
    providers = execution_providers(available, 0, TensorRTSettings(engine_cache="/c"))
    assert [p for p, _ in providers] == [TENSORRT, CUDA, CPU]
    trt = providers[0][1]
    assert trt["trt_fp16_enable"] == "1"
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == "/c"
    assert providers[1][1] == cuda_options()


def test_no_cuda_provider_is_refused_with_what_to_do():
    with pytest.raises(DlkitError, match=r"needs onnxruntime-gpu.*Use --device cpu"):
        execution_providers([CPU])
    with pytest.raises(DlkitError, match="no TensorRT execution provider"):
        execution_providers([CUDA, CPU], tensorrt=TensorRTSettings())


def test_tensorrt_settings_say_the_same_to_onnx_runtime_and_to_triton():
    settings = TensorRTSettings(fp16=False, engine_cache="/engines", workspace_bytes=1 << 28)
    ort, triton = settings.provider_options(2), settings.triton_parameters()
    assert ort["trt_fp16_enable"] == "0" and triton["precision_mode"] == "FP32"
    assert ort["trt_max_workspace_size"] == triton["max_workspace_size_bytes"] == str(1 << 28)
    assert ort["trt_engine_cache_path"] == triton["trt_engine_cache_path"] == "/engines"
    assert ort["device_id"] == "2"
    assert TensorRTSettings().triton_parameters()["precision_mode"] == "FP16"


def test_element_types():
    assert element_type("tensor(float)", "input") == "float32"
    assert element_type("tensor(float16)", "output") == "float16"
    with pytest.raises(DlkitError, match="input is tensor\\(int8\\)"):
        element_type("tensor(int8)", "input")


def test_the_bench_asks_onnx_for_cuda_graphs_on_cuda_only():
    onnx_plugin = plugin("onnx")
    assert onnx_plugin.fixed_batch_options("cuda", 8) == {"cuda_graph_batch": 8}
    assert onnx_plugin.fixed_batch_options("cpu", 8) == {}
    assert plugin("torchscript").fixed_batch_options("cuda", 8) == {}
    assert "tensorrt" in onnx_plugin.accelerators


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_runner_on_cuda_without_a_gpu_is_refused(onnx_files):
    for options in ({}, {"tensorrt": True}, {"cuda_graph_batch": BATCH}):
        with pytest.raises(DlkitError, match="--device cpu"):
            OnnxRunner(onnx_files["fp32"], device="cuda", **options)
    cpu = OnnxRunner(onnx_files["fp32"], device="auto")  # auto: the CPU here, no error
    assert cpu.providers == [CPU] and cpu.device_call(np.zeros((1, 3, SIZE, SIZE))) is None
    assert not cpu.cuda_graph


@pytest.mark.parametrize("name", ["fp32", "fp16", "fp16-io"])
def test_the_io_binding_answers_as_the_session_does_batch_after_batch(onnx_files, name):
    # The binding's logic (buffers kept per batch size, fp16 inputs and outputs cast, outputs
    # copied out before the next run overwrites them) run with host buffers, as on the GPU.
    import onnxruntime as ort

    from toolkit.artifacts.onnx_cuda import DeviceBinding

    session = ort.InferenceSession(onnx_files[name], providers=[CPU])
    bound = DeviceBinding(session, "cpu", CLASSES)
    batches = _batches()
    held = [bound.run(b) for b in batches]
    x, y = bound.buffers((BATCH, 3, SIZE, SIZE))
    assert bound.buffers((BATCH, 3, SIZE, SIZE))[0] is x  # kept while the size stays
    fp16 = name == "fp16-io"
    assert (x.dtype, y.dtype) == ((torch.float16,) * 2 if fp16 else (torch.float32,) * 2)
    for batch, out in zip(batches, held, strict=True):
        feed = batch.astype(np.float16) if fp16 else batch
        expected = session.run(None, {"input": feed})[0].astype(np.float32)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-6)
    assert bound.run(_batches(1, 1)[0]).shape == (1, CLASSES)  # rebinds for another size
    call = bound.device_call(batches[0])
    call()
    np.testing.assert_allclose(bound.buffers(batches[0].shape)[1].float().numpy(), held[0])


def test_a_binding_for_a_cuda_graph_refuses_other_batch_sizes(onnx_files):
    import onnxruntime as ort

    from toolkit.artifacts.onnx_cuda import DeviceBinding

    session = ort.InferenceSession(onnx_files["fp32"], providers=[CPU])
    bound = DeviceBinding(session, "cpu", CLASSES, fixed_batch=BATCH)
    assert bound.run(_batches(1)[0]).shape == (BATCH, CLASSES)
    with pytest.raises(DlkitError, match=f"CUDA graph captured for batches of {BATCH}; got 1"):
        bound.run(_batches(1, 1)[0])


# ------------------------------------------------------------------------------- on a GPU


def _batches(count: int = 3, batch: int = BATCH) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32) for _ in range(count)]


@pytest.mark.cuda
@pytest.mark.parametrize(("name", "tolerance"), [("fp32", 1e-2), ("fp16", 2e-2), ("fp16-io", 2e-2)])
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_runner_matches_the_cpu_batch_after_batch(onnx_files, name, tolerance, graph):
    # Outputs held while later batches run: a reused output buffer, or a CUDA graph replaying a
    # stale input, fails here.
    cpu = OnnxRunner(onnx_files["fp32"])
    options = {"cuda_graph_batch": BATCH} if graph else {}
    gpu = open_runner(onnx_files[name], device="cuda", **options)
    assert gpu.providers[0] == CUDA
    batches = _batches()
    held = [gpu(b) for b in batches]
    for batch, out in zip(batches, held, strict=True):
        expected = cpu(batch)
        assert out.dtype == np.float32 and out.shape == (BATCH, CLASSES)
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(out, expected, atol=tolerance * scale, rtol=tolerance)
    assert not np.allclose(held[0], held[1])
    if graph and gpu.cuda_graph:
        with pytest.raises(DlkitError, match=f"captured for batches of {BATCH}"):
            gpu(_batches(1, BATCH + 1)[0])
    else:
        assert gpu(_batches(1, 1)[0]).shape == (1, CLASSES)  # other batch sizes rebind


@pytest.mark.cuda
def test_device_call_runs_the_model_on_inputs_already_on_the_gpu(onnx_files):
    from toolkit.bench.harness import cuda_event_step

    runner = OnnxRunner(onnx_files["fp16"], device="cuda", cuda_graph_batch=BATCH)
    batch = _batches(1)[0]
    call = runner.device_call(batch)
    assert call is not None
    seconds = [cuda_event_step(call)() for _ in range(5)]
    assert all(s > 0 for s in seconds)
    _, output = runner.cuda.buffers(batch.shape)
    np.testing.assert_allclose(output.float().cpu().numpy(), runner(batch), atol=1e-3)


@pytest.mark.cuda
def test_bench_times_onnx_on_the_device():
    from toolkit.bench.harness import MeasureConfig
    from toolkit.bench.run import run_benchmark

    report = run_benchmark(
        model="smallresnet",
        image_size=SIZE,
        num_classes=CLASSES,
        variants=["onnx-fp32", "onnx-fp16"],
        device="cuda",
        batch_sizes=[1, 8],
        config=MeasureConfig(warmup=3, iters=10, windows=2, max_time=2.0),
    )
    assert report.skipped == [], report.skipped
    for row in report.results:
        assert row.device_latency_ms["p50"] > 0, row.variant
