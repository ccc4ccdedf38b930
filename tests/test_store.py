"""The verified-artifact store: one artifact per (model, variant, toolchain, CPU), made and
measured once, shared by `dlkit bench` and `dlkit deploy`, never half-written."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from toolkit.variants.registry import get_variant
from toolkit.variants.source import Source
from toolkit.variants.store import ArtifactStore, entry_key
from toolkit.variants.verified import verified_artifact


def test_bench_and_deploy_use_the_same_artifact(digits_checkpoint, tmp_path):
    from toolkit.bench.harness import MeasureConfig
    from toolkit.bench.run import run_benchmark
    from toolkit.deploy.selection import VariantReport
    from toolkit.deploy.stages import build_stage

    report = run_benchmark(
        [digits_checkpoint],
        variants=["onnx-int8-static"],
        batch_sizes=[1],
        threads=1,
        config=MeasureConfig(warmup=1, iters=5, windows=2, tolerance=0.9, max_time=2),
    )
    assert [r.variant for r in report.results] == ["onnx-int8-static"]
    source = Source.from_checkpoint(digits_checkpoint, threads=1)
    row = VariantReport.of(get_variant("onnx-int8-static"), "cpu")
    stored = build_stage(source, [row], tmp_path / "artifacts")["onnx-int8-static"]
    assert row.reused and stored.reused  # deploy found what bench made
    details = stored.record["details"]
    assert details["calibration_samples"] == 256 and "training images" in details["calibration"]
    assert os.path.samefile(row.path, stored.path)  # the run folder links to the stored file
    assert str(stored.path).startswith(report.settings["artifact_store"])


def test_the_key_names_what_decides_the_artifact(monkeypatch):
    import toolkit.variants.store as store
    from toolkit.cpu import cpu_features

    base = entry_key("abc", ["onnx-fp32", "onnx-int8-static"], {"calibration": 256})
    assert base == entry_key("abc", ["onnx-fp32", "onnx-int8-static"], {"calibration": 256})
    assert base != entry_key("abd", ["onnx-fp32", "onnx-int8-static"], {"calibration": 256})
    assert base != entry_key("abc", ["onnx-fp32", "onnx-int8-static"], {"calibration": 64})
    other_cpu = dataclasses.replace(cpu_features(), vnni=not cpu_features().vnni, avx2=True)
    monkeypatch.setattr(store, "cpu_features", lambda: other_cpu)
    assert base != entry_key("abc", ["onnx-fp32", "onnx-int8-static"], {"calibration": 256})
    monkeypatch.setattr(store, "toolchain_versions", lambda: {"onnxruntime": "0.0"})
    assert base != entry_key("abc", ["onnx-fp32", "onnx-int8-static"], {"calibration": 256})


def test_a_damaged_entry_is_made_again(make_model, tmp_path):
    model, info = make_model("smallresnet", 1, 16, 4)
    store = ArtifactStore(tmp_path / "store")
    first = verified_artifact(get_variant("onnx-fp32"), Source.from_model(model, info, store=store))
    assert not first.reused
    again = verified_artifact(get_variant("onnx-fp32"), Source.from_model(model, info, store=store))
    assert again.reused and again.path == first.path
    first.path.write_bytes(first.path.read_bytes()[:100])  # truncated behind the store's back
    remade = verified_artifact(
        get_variant("onnx-fp32"), Source.from_model(model, info, store=store)
    )
    assert not remade.reused and remade.record["parity"]["passed"]


def test_leftovers_of_killed_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    root = tmp_path / "store"
    (root / f".tmp-{dead}-0123").mkdir(parents=True)
    (root / f".tmp-{os.getpid()}-4567").mkdir()
    ArtifactStore(root)
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-{os.getpid()}-4567"]


def test_an_unwritable_store_is_one_clear_error(tmp_path, monkeypatch):
    from toolkit.errors import DlkitError
    from toolkit.variants.store import STORE_ENV

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(STORE_ENV, str(blocker / "store"))
    with pytest.raises(DlkitError, match=f"cannot create the artifact store.*{STORE_ENV}"):
        ArtifactStore()


def test_a_record_naming_files_outside_its_entry_is_not_trusted(make_model, tmp_path):
    import json

    model, info = make_model("smallresnet", 1, 16, 4)
    store = ArtifactStore(tmp_path / "store")
    stored = verified_artifact(
        get_variant("onnx-fp32"), Source.from_model(model, info, store=store)
    )
    record_file = stored.path.parent / "record.json"
    record = json.loads(record_file.read_text())
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(stored.path.read_bytes())
    record["files"] = ["../../elsewhere.onnx"]
    record["sha256"] = {"../../elsewhere.onnx": record["sha256"]["model.onnx"]}
    record_file.write_text(json.dumps(record))
    assert store.lookup(stored.path.parent.name, "onnx-fp32") is None
