"""`dlkit package`: configs built with Triton's protobuf, names, versions written atomically."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.errors import DlkitError
from toolkit.triton.configs import ServingOptions, read_config
from toolkit.triton.repository import PackageOptions, package_artifact

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the pip-installed tritonserver is Linux-only"
)


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


# ---------------------------------------------------------------------------------- configs


@pytest.mark.slow
def test_native_configs_parse_back_through_the_protobuf(tiny_exports, tiny_run, tmp_path):
    from toolkit.variants.export import export_checkpoint

    repo = tmp_path / "repo"
    onnx_result = package_artifact(tiny_exports["onnx"], repo, "digits_onnx")
    ts = package_artifact(tiny_exports["torchscript"], repo, "digits_ts")
    assert (onnx_result.platform, ts.platform) == ("onnxruntime_onnx", "pytorch_libtorch")
    config = _parse(repo / "digits_onnx" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [1, 16, 16])
    ]
    assert [(t.name, list(t.dims), t.label_filename) for t in config.output] == [
        ("logits", [10], "labels.txt")
    ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.model_warmup[0].inputs["input"].zero_data
    assert config.parameters["intra_op_thread_count"].string_value == "0"
    assert '"classes": ["0", "1"' in config.parameters["dlkit"].string_value
    assert (repo / "digits_onnx" / "1" / "model.onnx").is_file()
    assert (repo / "digits_onnx" / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    config = _parse(repo / "digits_ts" / "config.pbtxt")
    assert config.platform == "pytorch_libtorch" and config.default_model_filename == "model.pt"
    assert [t.name for t in config.input] == ["INPUT__0"]
    assert [t.name for t in config.output] == ["OUTPUT__0"]
    assert (repo / "digits_ts" / "1" / "model.pt").is_file()
    # A fixed batch of 4: Triton must not batch it, and the dims carry the batch.
    [static] = export_checkpoint(
        tiny_run["best_checkpoint"], tmp_path / "static", ("onnx",), static_batch=4
    )
    result = package_artifact(static.path, repo, "digits_static")
    config = _parse(repo / "digits_static" / "config.pbtxt")
    assert result.max_batch_size == 0 == config.max_batch_size
    assert list(config.input[0].dims) == [4, 1, 16, 16] and not config.HasField("dynamic_batching")
    with pytest.raises(DlkitError, match="fixed batch size"):
        options = PackageOptions(serving=ServingOptions(max_batch_size=8))
        package_artifact(static.path, repo, "x", options=options)


@pytest.mark.slow
def test_package_cli_names_models_after_their_files(dlkit, tiny_exports, tmp_path):
    repo = tmp_path / "repo"
    out = dlkit.json(
        "package", tiny_exports["onnx"], tiny_exports["torchscript"], "--repo", repo,
        "--backend", "python", "--instances", "2",
    )  # fmt: skip
    assert [m["model"] for m in out["models"]] == ["best_onnx", "best_torchscript"]
    assert all(m["backend"] == "python" and m["version"] == 1 for m in out["models"])
    config = read_config(repo / "best_torchscript" / "config.pbtxt")
    assert config.backend == "python" and config.instance_group[0].count == 2
    assert sorted(p.name for p in (repo / "best_torchscript" / "1").iterdir()) == [
        "model.pt",
        "model.py",
    ]
    result = dlkit("package", tiny_exports["onnx"], "--repo", repo, "--name", "bad name", expect=1)
    assert result.output.startswith("Error: model name 'bad name'")


@pytest.mark.slow
def test_new_versions_are_atomic_and_leave_old_ones_untouched(
    tiny_exports, tiny_run, tmp_path, monkeypatch
):
    import toolkit.triton.repository as repository

    repo = tmp_path / "repo"
    package_artifact(tiny_exports["onnx"], repo, "m")
    before = (repo / "m" / "1" / "model.onnx").stat()
    assert package_artifact(tiny_exports["onnx"], repo, "m").version == 2
    after = (repo / "m" / "1" / "model.onnx").stat()
    assert (before.st_mtime_ns, before.st_ino) == (after.st_mtime_ns, after.st_ino)
    # A copy that fails half-way leaves no version 3 and no temporary folder.
    real_copy = shutil.copyfile

    def failing_copy(src, dst, *args, **kwargs):
        real_copy(src, dst, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(repository.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        package_artifact(tiny_exports["onnx"], repo, "m", options=PackageOptions(backend="native"))
    monkeypatch.undo()
    assert sorted(p.name for p in (repo / "m").iterdir()) == [
        "1",
        "2",
        "config.pbtxt",
        "labels.txt",
    ]
    with pytest.raises(DlkitError, match="already exists"):
        package_artifact(tiny_exports["onnx"], repo, "m", version=2)
    with pytest.raises(DlkitError, match="different format"):
        package_artifact(tiny_exports["torchscript"], repo, "m")
    with pytest.raises(DlkitError, match="is a checkpoint"):
        package_artifact(tiny_run["best_checkpoint"], repo, "c")
    assert not list(repo.rglob(".*tmp*"))
