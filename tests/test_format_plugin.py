"""A format is one plugin: a made-up one, written in this file alone and registered, is
exported, run, benchmarked, made and gated through the artifact store, deployed, packaged for
Triton's python backend and served, with no line of dlkit changed for it.

The made-up format, "zonnx", is an ONNX file compressed with zlib behind a magic line: made
from its parent variant `onnx-fp32`, run by ONNX Runtime from memory.
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from toolkit.artifacts import detect_format, open_runner, read_info
from toolkit.artifacts.format_plugin import FileVariant, FormatPlugin, TritonNative
from toolkit.artifacts.registry import register, unregister
from toolkit.artifacts.runner import Runner
from toolkit.errors import DlkitError

MAGIC = b"ZONNX1\n"


def _onnx_bytes(path) -> bytes:
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise DlkitError(f"{path} is not a zonnx file")
    return zlib.decompress(data[len(MAGIC) :])


def _compress(target: Path, parent: Path, info, context) -> dict:
    from toolkit.artifacts.onnx import write_info

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model.onnx"
        copy.write_bytes(parent.read_bytes())
        write_info(copy, info)  # this format's metadata, inside the compressed ONNX
        target.write_bytes(MAGIC + zlib.compress(copy.read_bytes()))
    return {"compressed_from": parent.name}


class ZonnxRunner(Runner):
    name = "zonnx"

    def __init__(self, path, device="cpu", threads=None):
        import onnxruntime as ort

        self.info = ZonnxPlugin().read_info(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        self.session = ort.InferenceSession(_onnx_bytes(path), options)

    def run(self, batch):
        return self.session.run(None, {"input": batch})[0]


def _stub_runner(path, params, gpu, device_id):
    import zlib

    import numpy as np
    import onnxruntime as ort

    with open(path, "rb") as f:
        data = f.read()
    session = ort.InferenceSession(zlib.decompress(data[len(b"ZONNX1\n") :]))

    def run(batch):
        return np.asarray(session.run(None, {"input": batch})[0], dtype=np.float32)

    return run


class ZonnxPlugin(FormatPlugin):
    name = "zonnx"
    suffix = ".zonnx"
    exportable = True
    triton = TritonNative(model_file="model.zonnx")  # no native backend: the python one only
    stub_runner = staticmethod(_stub_runner)

    def sniff(self, path, head):
        return head.startswith(MAGIC)

    def read_info(self, path):
        import onnx

        from toolkit.artifacts.metadata import parse_info
        from toolkit.artifacts.onnx import METADATA_KEY

        props = {p.key: p.value for p in onnx.load_from_string(_onnx_bytes(path)).metadata_props}
        return parse_info(props.get(METADATA_KEY), path)

    def open_runner(self, path, device="cpu", objective=None, **options):
        return ZonnxRunner(path, device, **options)

    def variants(self):
        return (
            FileVariant(
                name="zonnx-fp32",
                description="ONNX Runtime on a zlib-compressed ONNX file (a made-up format)",
                format=self.name,
                parent="onnx-fp32",
                make=_compress,
            ),
        )

    def io_tensors(self, path, info, native):
        from toolkit.artifacts.onnx import graph_tensors

        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "model.onnx"
            plain.write_bytes(_onnx_bytes(path))
            return graph_tensors(plain, info)


@pytest.fixture
def zonnx():
    plugin = register(ZonnxPlugin())
    yield plugin
    unregister(plugin.name)


def test_a_registered_format_is_exported_run_and_gated(zonnx, digits_checkpoint, tmp_path):
    from toolkit.variants.export import export_checkpoint
    from toolkit.variants.registry import get_variant, lineage
    from toolkit.variants.source import Source
    from toolkit.variants.verified import verdict, verified_artifact

    [result] = export_checkpoint(digits_checkpoint, tmp_path, ("zonnx",))
    assert result.kept and result.parity.passed and result.path.endswith("digits.zonnx")
    assert detect_format(result.path) == "zonnx" and read_info(result.path).format == "zonnx"
    batch = np.zeros((3, *read_info(result.path).preprocessing.input_shape), np.float32)
    assert open_runner(result.path)(batch).shape == (3, 10)

    assert [v.name for v in lineage("zonnx-fp32")] == ["onnx-fp32", "zonnx-fp32"]
    source = Source.from_checkpoint(digits_checkpoint, threads=1)
    stored = verified_artifact(get_variant("zonnx-fp32"), source)
    assert stored.record["parity"]["passed"] and len(stored.record["predictions"]) == 359
    judged = verdict(stored, source, max_accuracy_drop=1.0)
    assert judged["gate"].ok and judged["top1_agreement"] == 1.0
    again = verified_artifact(get_variant("zonnx-fp32"), Source.from_checkpoint(digits_checkpoint))
    assert again.reused and again.path == stored.path  # made once, kept in the store


def test_a_registered_format_is_benchmarked(zonnx, digits_checkpoint):
    from toolkit.bench.harness import MeasureConfig
    from toolkit.bench.run import run_benchmark

    report = run_benchmark(
        [digits_checkpoint],
        variants=["eager-fp32", "zonnx-fp32"],
        batch_sizes=[1],
        threads=1,
        config=MeasureConfig(warmup=1, iters=5, windows=2, tolerance=0.9, max_time=2),
    )
    assert {r.variant for r in report.results} == {"eager-fp32", "zonnx-fp32"}


def test_a_registered_format_is_packaged_for_the_python_backend_only(
    zonnx, digits_checkpoint, tmp_path
):
    from toolkit.triton.repository import PackageOptions, package_artifact
    from toolkit.variants.export import export_checkpoint

    [result] = export_checkpoint(digits_checkpoint, tmp_path, ("zonnx",))
    with pytest.raises(DlkitError, match="no native Triton backend serves zonnx"):
        package_artifact(result.path, tmp_path / "repo", "z")
    written = package_artifact(
        result.path, tmp_path / "repo", "z", options=PackageOptions(backend="python")
    )
    folder = Path(written.path)
    assert sorted(p.name for p in folder.iterdir()) == ["model.py", "model.zonnx", "runner.py"]
    # runner.py stands alone (Triton's stub has no dlkit): run it in a fresh namespace.
    namespace: dict = {}
    exec(compile((folder / "runner.py").read_text(), "runner.py", "exec"), namespace)
    run = namespace["make_runner"](str(folder / "model.zonnx"), {}, False, 0)
    shape = read_info(result.path).preprocessing.input_shape
    batch = np.random.default_rng(0).standard_normal((2, *shape), dtype=np.float32)
    np.testing.assert_allclose(run(batch), open_runner(result.path)(batch), rtol=1e-6)


@pytest.mark.slow
def test_a_registered_format_is_deployed_and_served(zonnx, tiny_run, tmp_path, start_triton):
    from toolkit.deploy import DeployConfig, deploy
    from toolkit.triton.repository import PackageOptions, package_artifact

    config = DeployConfig(
        checkpoint=tiny_run["best_checkpoint"], out=str(tmp_path / "run"),
        repo=str(tmp_path / "repo"), variants=("zonnx-fp32",), batch_sizes=(1,),
        bench_seconds=0.05, smoke_test=False,
    )  # fmt: skip
    rows = {v["name"]: v for v in deploy(config).to_dict()["variants"]}
    zonnx_row = rows["zonnx-fp32"]
    assert zonnx_row["gate"] == "passed" and zonnx_row["top1_agreement"] == 1.0
    assert zonnx_row["latency_ms"]["p50"] > 0 and Path(zonnx_row["path"]).is_file()

    repo = tmp_path / "served"
    package_artifact(zonnx_row["path"], repo, "z", options=PackageOptions(backend="python"))
    server = start_triton(repo)
    local = open_runner(zonnx_row["path"])
    batch = np.random.default_rng(0).standard_normal(
        (4, *local.info.preprocessing.input_shape), dtype=np.float32
    )
    served = open_runner(f"grpc://{server.grpc_url}/z")
    np.testing.assert_allclose(served(batch), local(batch), atol=1e-5)
