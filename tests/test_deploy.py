"""`dlkit deploy`: selection logic, reuse on rerun, and failures that leave the repository alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.deploy import DeployConfig, VariantReport, deploy, select_variant
from toolkit.errors import DlkitError
from toolkit.variants.gate import Gate


def variant(name, simplicity, p50, throughput, gate="passed", servable=True):
    return VariantReport(
        name, "onnx", "fp32", simplicity, path=f"{name}.onnx", servable=servable,
        gate=Gate.parse(gate), latency_ms={"p50": p50, "p99": p50 * 2}, throughput=throughput,
    )  # fmt: skip


def test_selection_respects_the_budget_and_the_objective():
    variants = [
        variant("eager", -1, 0.1, 99999, gate="baseline", servable=False),
        variant("fp32", 0, 10.0, 100),
        variant("int8", 3, 2.0, 300),
        variant("int8-lossy", 4, 1.0, 900, gate="failed: loses 3.00 points (budget 1)"),
        variant("batchy", 2, 6.0, 600),
    ]
    assert select_variant(variants, "latency").name == "int8"
    assert select_variant(variants, "throughput").name == "batchy"


def test_ties_go_to_the_simpler_variant():
    variants = [variant("static", 3, 2.00, 500), variant("fp32", 0, 2.08, 480)]
    assert select_variant(variants, "latency").name == "fp32"  # within 5%
    assert select_variant(variants, "latency", tie_tolerance=0.01).name == "static"
    assert select_variant(variants, "throughput").name == "fp32"


def test_all_variants_failing_is_an_error_that_lists_why():
    variants = [
        variant("fp32", 0, 1.0, 1, gate="failed: parity (3 of 80 logits differ)"),
        variant("int8", 3, 1.0, 1, gate="failed: loses 2.00 points (budget 1)"),
    ]
    with pytest.raises(DlkitError, match=r"fp32: failed: parity.*int8: failed: loses"):
        select_variant(variants)
    with pytest.raises(DlkitError, match="unknown objective"):
        select_variant(variants, "accuracy")


def quick(tiny_run, tmp_path, **options) -> DeployConfig:
    settings = dict(
        checkpoint=tiny_run["best_checkpoint"], out=str(tmp_path / "run"),
        repo=str(tmp_path / "repo"), smoke_test=False, batch_sizes=(1, 4), bench_seconds=0.05,
    )  # fmt: skip
    return DeployConfig(**(settings | options))


@pytest.mark.slow
def test_deploy_packages_the_selected_variant_and_reuses_on_rerun(tiny_run, tmp_path):
    from toolkit.cpu import cpu_features

    first = deploy(quick(tiny_run, tmp_path)).to_dict()
    names = {v["name"]: v for v in first["variants"]}
    # The tiny model is an MLP: dynamic int8 suits it. bf16 only where the CPU has it natively.
    assert set(names) == {
        "eager-fp32",
        "onnx-fp32",
        "torchscript-fp32",
        "onnx-int8-dynamic",
        "onnx-int8-static",
        "openvino-fp32",
        "openvino-int8",
    } | ({"openvino-bf16"} if cpu_features().bf16 else set())
    selected = first["selected"]
    assert selected["gate"] == "passed" and selected["accuracy_drop_points"] <= 1.0
    assert first["packaged"][0]["model"] == "classifier"
    assert (tmp_path / "repo" / "classifier" / "1").is_dir()
    assert (tmp_path / "repo" / "classifier" / "config.pbtxt").is_file()
    run = tmp_path / "run"
    for name in ("report.md", "report.json", "accuracy_latency.png"):
        assert (run / name).is_file(), name
    assert "| onnx-int8-static" in (run / "report.md").read_text()
    assert not any(v["reused"] for v in first["variants"])
    files = {v["name"]: Path(v["path"]) for v in first["variants"] if v.get("path")}
    written = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in files.items()}

    second = deploy(quick(tiny_run, tmp_path)).to_dict()
    reused = {v["name"]: v["reused"] for v in second["variants"]}
    assert all(reused[n] for n in ("onnx-fp32", "torchscript-fp32", "onnx-int8-static"))
    assert all(reused[n] for n in ("openvino-fp32", "openvino-int8"))
    # Reused means the verified files themselves: not one of them was written again.
    for name in ("onnx-fp32", "torchscript-fp32", "onnx-int8-static"):
        path = files[name]
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == written[name], name
    assert (tmp_path / "repo" / "classifier" / "2").is_dir()  # a new version, the old one kept


@pytest.mark.slow
def test_a_failing_stage_leaves_the_repository_untouched(tiny_run, tmp_path, make_model):
    # A model called "classifier" that takes other inputs is already being served.
    from toolkit.triton.repository import package_artifact
    from toolkit.variants.export import export_model

    model, info = make_model("smallresnet", 3, 24, 3)
    export_model(model, info, tmp_path, "other", ("onnx",))
    package_artifact(tmp_path / "other.onnx", tmp_path / "repo", "classifier")
    before = snapshot(tmp_path / "repo")

    with pytest.raises(DlkitError, match=r"deploy failed at stage 'package'.*was not changed"):
        deploy(quick(tiny_run, tmp_path))
    assert snapshot(tmp_path / "repo") == before
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["failed_stage"] == "package" and report["error"]
    assert "Failed at stage `package`" in (tmp_path / "run" / "report.md").read_text()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_deploy_refuses_an_artifact_that_is_not_a_checkpoint(dlkit, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07garbage")
    result = dlkit("deploy", path, "--out", tmp_path / "r", "--repo", tmp_path / "repo", expect=1)
    assert "is not a dlkit checkpoint" in result.output
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_deploy_smoke_tests_the_served_model(tiny_run, tmp_path):
    report = deploy(quick(tiny_run, tmp_path, smoke_test=True)).to_dict()
    smoke = report["smoke_test"]
    assert smoke["top1_agreement"] >= 0.98
    if report["selected"]["precision"] == "fp32":
        assert smoke["max_abs_err"] < 1e-3
    assert smoke["samples"] == 64 and smoke["endpoint"].endswith("/classifier")
    assert "Smoke test: 64 validation images" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "compile-fp32"], "can package torchscript-fp32, onnx-fp32"),
        (["--variants", "fast"], "unknown variant 'fast'"),
        (["--model", "resnet18"], "--model choose what to train: not with a CHECKPOINT"),
        (["--channels", "1", "--lr", "0.1"], "--channels, --lr choose what to train: not with"),
    ],
)
def test_deploy_options_are_checked_before_any_work(
    dlkit, digits_checkpoint, tmp_path, args, message
):
    out = tmp_path / "run"
    result = dlkit(
        "deploy", digits_checkpoint, "--out", out, "--repo", tmp_path / "repo", *args, expect=1
    )
    assert message in result.output
    assert not (tmp_path / "repo").exists() and not list(out.glob("artifacts"))


@pytest.mark.slow
def test_deploy_tries_only_the_variants_asked_for(tiny_run, tmp_path):
    report = deploy(quick(tiny_run, tmp_path, variants=("onnx-int8-static",))).to_dict()
    assert [v["name"] for v in report["variants"]] == [
        "eager-fp32",
        "onnx-fp32",
        "onnx-int8-static",
    ]


def test_a_run_folder_from_an_older_dlkit_is_still_reused(tmp_path):
    import json

    from toolkit.deploy.pipeline import _same_training
    from toolkit.training.config import TrainConfig

    config = TrainConfig(quiet=True, out=str(tmp_path / "train")).resolved()
    stored = config.to_dict()
    for newer in ("threads", "workers", "class_weights", "focal_alpha"):
        stored.pop(newer, None)  # what an older dlkit wrote
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(stored))
    assert _same_training(saved, config)
    saved.write_text(json.dumps(stored | {"epochs": 3}))
    assert not _same_training(saved, config)
    saved.write_text("{not json")
    assert not _same_training(saved, config)


def test_the_report_warns_when_the_model_learnt_nothing(tmp_path):
    from toolkit.deploy.report import DeployReport, format_markdown

    report = DeployReport(config={}, run_dir=str(tmp_path), training={"learned": False})
    assert "does no better than chance" in format_markdown(report)
    report.training = {"reused": False}
    assert "chance" not in format_markdown(report)


@pytest.mark.slow
def test_deploy_goes_through_on_a_small_set_with_training_and_packaging_options(
    dlkit, tmp_path, make_shapes
):
    """80 images (64 to train on): fewer than static int8's 256 calibration images."""
    data = make_shapes(tmp_path / "shapes", per_class=40)
    common = ["--data", data, "--model", "simplenet", "--image-size", "16", "--epochs", "1"]
    common += ["--channels", "1", "--lr", "0.01", "--batch-size", "16"]
    common += ["--variants", "onnx-int8-static", "--batch-sizes", "1,4", "--bench-seconds", "0.05"]
    run, repo = tmp_path / "run", tmp_path / "repo"
    result = dlkit("deploy", *common, "--out", run, "--repo", repo, "--backend", "python",
                   "--preprocess", "--no-smoke-test", "--json")  # fmt: skip
    report = json.loads(result.stdout)
    trained = json.loads((run / "train" / "config.json").read_text())
    assert (trained["channels"], trained["lr"], trained["batch_size"]) == (1, 0.01, 16)
    static = next(v for v in report["variants"] if v["name"] == "onnx-int8-static")
    assert "calibrated on all 64 training images" in static["note"]
    assert static["note"].count("calibrated on") == 1
    assert "calibrating on all 64 images" in result.stderr
    assert static["samples"] == 16 and report["selected"]["samples"] == 16
    assert 'backend: "python"' in (repo / "classifier" / "config.pbtxt").read_text()
    assert (repo / "classifier_ensemble").is_dir() and not (
        repo / "classifier_fallback_ensemble"
    ).exists()
    assert "on 16 validation images" in (run / "report.md").read_text()

    # A later stage that fails names the trained checkpoint to continue from.
    failed = dlkit("deploy", *common, "--out", run, "--repo", repo, "--backend", "python",
                   "--calib-samples", "500", "--no-smoke-test", expect=1).output  # fmt: skip
    assert "deploy failed at stage 'build': only 64 calibration images" in failed
    assert f"The trained model is {run / 'train' / 'best.pt'}: `dlkit deploy " in failed


@pytest.mark.slow
def test_a_backend_the_server_here_cannot_serve_skips_the_smoke_test(tiny_run, tmp_path):
    from toolkit.triton.server import find_tritonserver

    if "onnxruntime" in find_tritonserver().backends():
        pytest.skip("this tritonserver serves the native backend")
    options = dict(backend="native", smoke_test=True, variants=("onnx-fp32",))
    report = deploy(quick(tiny_run, tmp_path, **options)).to_dict()
    assert report["smoke_test"] is None and report["packaged"][0]["backend"] == "native"
    assert "the tritonserver here cannot serve it" in report["skipped_stages"]["smoke test"]


def test_the_report_names_the_figures_that_did_not_settle(tmp_path):
    from toolkit.deploy.report import DeployReport, format_markdown, unsettled_figures
    from toolkit.deploy.selection import VariantReport

    def variant(name: str, settled: dict[int, bool]) -> VariantReport:
        rows = [
            {"batch_size": b, "stability": {"stable": ok, "spread": 0.0 if ok else 0.12}}
            for b, ok in settled.items()
        ]
        v = VariantReport(name, "onnx", "fp32", 1, accuracy=0.9, benchmark=rows)
        v.latency_ms, v.throughput = {"p50": 1.0, "p99": 2.0}, 100.0
        v.stable = all(settled.values())
        return v

    # Only the baseline's throughput at batch 32 wobbled: a latency claim stands on batch 1.
    baseline = variant("eager-fp32", {1: True, 32: False})
    selected = variant("onnx-int8-static", {1: True, 32: True})
    assert unsettled_figures(selected, baseline, "latency", [1, 32]) == []
    named = unsettled_figures(selected, baseline, "throughput", [1, 32])
    assert named == ["eager-fp32's throughput at batch 32 (its windows 12% apart)"]
    config = {"objective": "throughput", "max_accuracy_drop": 1.0, "batch_sizes": [1, 32]}
    report = DeployReport(config=config, run_dir=str(tmp_path), selected=selected)
    report.speedup_vs_eager_fp32, report.unsettled = 2.0, named
    assert (
        "no speed-up is claimed: eager-fp32's throughput at batch 32 (its windows 12% apart) "
        "did not settle, marked !" in format_markdown(report)
    )
    assert report.to_dict()["unsettled_figures"] == named


def test_with_no_tritonserver_deploy_says_which_backend_it_packages_for(tmp_path):
    """No server found is not a silent guess: the warning says what was chosen and why."""
    repo = Path(__file__).resolve().parent.parent
    code = (
        "from toolkit.log import configure_logging\n"
        "from toolkit.deploy.selection import VariantReport\n"
        "from toolkit.deploy.serving import _backend\n"
        "configure_logging(0)\n"
        "backend, why = _backend(VariantReport('onnx-fp32', 'onnx', 'fp32', 0))\n"
        "print(backend, '|', why)\n"
    )
    env = os.environ | {
        "PYTHONPATH": f"{repo / 'benchmarks' / 'hide_modules'}{os.pathsep}{repo}",
        "DLKIT_HIDE_MODULES": "pytriton",
        "PATH": str(tmp_path),  # no tritonserver on it
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    backend, _, why = done.stdout.strip().partition(" | ")
    assert backend == "native" and why.startswith("no tritonserver here (tritonserver not found")
    assert "packaged for Triton's native backends" in why
    assert f"warning: {why}" in done.stderr
