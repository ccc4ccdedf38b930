"""OpenVINO: the IR format (export, metadata, runner at the precision it names), its variants
(offered where the CPU runs them natively), and how Triton serves it (native backend config,
python backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.artifacts import detect_format, open_runner, read_info
from toolkit.errors import DlkitError


@pytest.fixture(scope="module")
def ir(digits_checkpoint, tmp_path_factory) -> Path:
    from toolkit.variants.export import export_checkpoint

    [result] = export_checkpoint(digits_checkpoint, tmp_path_factory.mktemp("ov"), ("openvino",))
    assert result.kept
    return Path(result.path)


def test_export_writes_ir_with_its_weights_and_metadata(ir, digits_checkpoint):
    assert ir.name == "digits.openvino.xml" and ir.with_suffix(".bin").is_file()
    assert detect_format(ir) == "openvino"
    info = read_info(ir)
    assert info.format == "openvino" and info.precision == "fp32"
    assert info.source_checkpoint == str(Path(digits_checkpoint).resolve())
    # what was made on the way (the fp32 ONNX parent) is not left beside it
    assert sorted(p.name for p in ir.parent.iterdir()) == [
        "digits.openvino.bin",
        "digits.openvino.xml",
    ]


def test_fp32_ir_runs_in_fp32_even_where_bf16_is_the_default(ir, digits_checkpoint):
    # OpenVINO computes fp32 models in bf16 on CPUs with native bf16 unless told otherwise.
    runner = open_runner(ir, threads=1)
    assert runner.config["INFERENCE_PRECISION_HINT"] == "f32"
    batch = np.random.default_rng(0).standard_normal(
        (3, *runner.info.preprocessing.input_shape), dtype=np.float32
    )
    np.testing.assert_allclose(runner(batch), open_runner(digits_checkpoint)(batch), atol=1e-4)


def test_eval_and_predict_take_the_ir(dlkit, ir, digits_checkpoint, digit_images):
    assert dlkit.json("eval", ir)["accuracy"] == dlkit.json("eval", digits_checkpoint)["accuracy"]
    labels = [
        [k["label"] for k in dlkit.json("predict", m, digit_images[0])["predictions"][0]["top_k"]]
        for m in (ir, digits_checkpoint)
    ]
    assert labels[0] == labels[1]


def test_broken_ir_files_are_one_clear_error(ir, tmp_path):
    lonely = tmp_path / "lonely.openvino.xml"
    lonely.write_bytes(ir.read_bytes())  # no .bin beside it
    with pytest.raises(DlkitError, match=r"no lonely\.openvino\.bin beside it"):
        open_runner(lonely)
    other = tmp_path / "other.xml"
    other.write_text('<?xml version="1.0"?>\n<html><body/></html>\n')
    with pytest.raises(DlkitError, match="not an OpenVINO IR"):
        read_info(other)
    truncated = tmp_path / "cut.openvino.xml"
    truncated.write_bytes(ir.read_bytes()[:200])
    with pytest.raises(DlkitError, match="not a readable OpenVINO IR"):
        read_info(truncated)


def test_bf16_variant_is_offered_only_where_bf16_is_native(monkeypatch):
    import dataclasses

    import toolkit.variants.registry as registry
    from toolkit.cpu import cpu_features

    for native in (False, True):
        cpu = dataclasses.replace(cpu_features(), bf16=native)
        monkeypatch.setattr(registry, "cpu_features", lambda cpu=cpu: cpu)
        names = registry.default_variants("cpu")
        assert ("openvino-bf16" in names) is native
        assert ("compile-amp-cl" in names) is native and ("eager-amp-cl" in names) is native
        why = registry.get_variant("openvino-bf16").unavailable("cpu", cpu)
        assert (why == "") is native


def test_dynamic_int8_is_offered_first_for_linear_heavy_models_only(make_model):
    from toolkit.variants.registry import default_variants, deploy_candidates
    from toolkit.variants.source import model_profile

    conv = model_profile(*make_model("smallresnet", 1, 16, 10))
    mlp = model_profile(*make_model("simplenet", 1, 16, 10))
    assert conv.linear_share < 0.1 < 0.9 < mlp.linear_share and conv.macs > mlp.macs > 0
    assert "onnx-int8-dynamic" not in deploy_candidates("cpu", conv)
    assert "onnx-int8-dynamic" not in default_variants("cpu", conv)
    assert "onnx-int8-dynamic" in deploy_candidates("cpu", mlp)


def _config(path, backend="native", **serving):
    from toolkit.artifacts import plugin
    from toolkit.triton.configs import ServingOptions, classifier_config

    fmt = plugin(detect_format(path))
    info = read_info(path)
    tensors = fmt.io_tensors(path, info, native=backend == "native")
    return classifier_config("m", fmt, info, tensors, backend, ServingOptions(**serving), 32)


def test_native_openvino_backend_config(ir):
    from toolkit.triton.configs import config_text, parameter

    config = _config(ir, threads=2)
    assert config.backend == "openvino" and config.default_model_filename == "model.xml"
    assert [i.name for i in config.input] == ["input"] and list(config.output[0].dims) == [10]
    assert parameter(config, "INFERENCE_NUM_THREADS") == "2"
    assert parameter(config, "PERFORMANCE_HINT") == "LATENCY"
    assert not parameter(config, "HINT_BF16")
    assert 'backend: "openvino"' in config_text(config)  # survives the protobuf round trip


def test_onnx_with_the_openvino_accelerator_and_where_it_is_refused(
    ir, tmp_path, digits_checkpoint
):
    from toolkit.triton.configs import accelerator, serving_options
    from toolkit.variants.export import export_checkpoint

    results = export_checkpoint(digits_checkpoint, tmp_path, ("onnx", "torchscript"))
    onnx_file, torchscript_file = (r.path for r in results)
    config = _config(onnx_file, accelerator="openvino")
    assert config.platform == "onnxruntime_onnx" and accelerator(config) == "openvino"
    assert serving_options(config).accelerator == "openvino"
    assert accelerator(_config(onnx_file)) == ""
    for path, backend in ((torchscript_file, "native"), (ir, "native"), (onnx_file, "python")):
        with pytest.raises(DlkitError, match="accelerator"):
            _config(path, backend, accelerator="openvino")


def test_packaged_for_the_python_backend_with_its_runner(ir, tmp_path):
    from toolkit.triton.configs import parameter, read_config
    from toolkit.triton.repository import PackageOptions, package_artifact

    written = package_artifact(
        ir, tmp_path / "repo", "ov", options=PackageOptions(backend="python")
    )
    folder = Path(written.path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["model.bin", "model.py", "model.xml", "runner.py"]
    config = read_config(folder.parent / "config.pbtxt")
    assert parameter(config, "artifact_format") == "openvino"
    assert parameter(config, "inference_precision") == "f32"
    namespace: dict = {}
    exec(compile((folder / "runner.py").read_text(), "runner.py", "exec"), namespace)
    run = namespace["make_runner"](
        str(folder / "model.xml"), {"intra_op_thread_count": "1"}, False, 0
    )
    batch = np.zeros((2, *read_info(ir).preprocessing.input_shape), dtype=np.float32)
    np.testing.assert_allclose(run(batch), open_runner(ir)(batch), atol=1e-5)


def test_a_repository_dlkit_wrote_for_openvino_passes_the_serving_audit(ir, tmp_path):
    from toolkit.triton.audit import check_repository
    from toolkit.triton.repository import PackageOptions, package_artifact

    repo = tmp_path / "repo"
    package_artifact(ir, repo, "ov", options=PackageOptions(backend="python"))
    package_artifact(ir, repo, "native")
    check_repository(repo, ["ov", "native"])  # nothing dlkit did not write
    (repo / "ov" / "1" / "runner.py").write_text("import os\n")
    with pytest.raises(DlkitError, match=r"runner\.py is not the runner dlkit writes"):
        check_repository(repo, ["ov"])
