"""benchmarks/gpu_check.sh, run here as its CPU dry run (the real run needs a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = ["environment", "train", "eval_cpu", "oom", "pytest_cuda", "deploy", "amp_training"]
STEPS += ["cuda_variants"]


def test_hidden_modules_cannot_be_imported():
    env = os.environ | {
        "PYTHONPATH": f"{REPO / 'benchmarks' / 'hide_modules'}{os.pathsep}{REPO}",
        "DLKIT_HIDE_MODULES": "tritonclient,torchao",
    }
    code = "try:\n    import tritonclient.grpc\nexcept ModuleNotFoundError as e:\n    print(e.name)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "tritonclient"


@pytest.mark.slow
def test_dry_run_runs_every_step_and_returns_one_archive(tmp_path):
    env = os.environ | {"PYTHON": sys.executable, "GPU_CHECK_SECONDS": "900"}
    script = REPO / "benchmarks" / "gpu_check.sh"
    result = subprocess.run(
        ["bash", str(script), "--device", "cpu", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "gpu_check_summary.md"]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "gpu_check"
    rows = [line.split("\t") for line in (folder / "steps.tsv").read_text().splitlines()]
    assert [row[0] for row in rows] == STEPS
    status = {row[0]: row[1] for row in rows}
    assert set(status.values()) == {"ok"}, (status, result.stdout)
    # With tritonclient hidden, deploy verifies and selects, then skips packaging and says why.
    deployed = json.loads((folder / "deploy.json").read_text())
    assert deployed["selected"] and deployed.get("failed_stage") is None
    assert "tritonclient cannot be imported" in deployed["skipped_stages"]["package"]
    assert "headline ratios:" in result.stdout  # the summary comes last

    env_info = json.loads((folder / "environment.json").read_text())
    assert env_info["packages"]["tritonclient"].startswith("missing")
    assert env_info["toolkit_imports"]["toolkit.training.run"] == "ok"
    assert json.loads((folder / "oom_check.json").read_text())["passed"]
    assert json.loads((folder / "eval_cpu.json").read_text())["accuracy"] > 0.5
    amp = json.loads((folder / "amp_training" / "amp_training.json").read_text())
    assert list(amp["results"]) == ["fp32", "fp32-cl", "fp16-cl", "bf16-cl"]
    assert "needs CUDA" in amp["results"]["fp16-cl"]["skipped"]
    assert amp["results"]["bf16-cl"]["trainer_images_per_s"] > 0
    assert (folder / "amp_training" / "amp_training_profile_fp32.txt").is_file()
    variants = json.loads((folder / "cuda_variants" / "cuda_variants.json").read_text())
    assert {r["batch_size"] for r in variants["results"]} == {1, 2}
    assert len(variants["goals"]) == 2
    assert "headline ratios:" in (folder / "summary.txt").read_text()
