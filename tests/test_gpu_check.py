"""benchmarks/gpu_check.sh, run here as its CPU dry run (the real run needs a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = ["install_wheels", "environment", "train", "eval_cpu", "oom", "pytest_cuda", "deploy"]
STEPS += ["amp_training", "serving", "cuda_variants"]


def _carried_wheels(tmp_path: Path) -> Path:
    """What the device calls leave on the machine: a wheel made here, cut by
    benchmarks/carry_wheels.py into two loads, each stashed by install_wheels.sh."""
    spec = importlib.util.spec_from_file_location(
        "carry_wheels", REPO / "benchmarks" / "carry_wheels.py"
    )
    carry = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = carry
    spec.loader.exec_module(carry)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    info = "dlkit_carry_probe-1.0.dist-info"
    with zipfile.ZipFile(wheels / "dlkit_carry_probe-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("dlkit_carry_probe/__init__.py", "VALUE = 42\n")
        archive.writestr("dlkit_carry_probe/payload.bin", os.urandom(100_000))
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: dlkit-carry-probe\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    loads = carry.write_loads(wheels, tmp_path / "carry", limit=60_000)
    stash = tmp_path / "stash"
    for number in range(1, len(loads) + 1):
        subprocess.run(
            ["bash", str(REPO / "benchmarks" / "install_wheels.sh"), "stash",
             str(tmp_path / "carry" / f"load-{number}"), str(stash)],
            check=True, capture_output=True,
        )  # fmt: skip
    return stash


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
def test_dry_run_installs_what_was_carried_runs_every_step_and_returns_one_archive(tmp_path):
    venv = tmp_path / "venv"
    env = os.environ | {"PYTHON": sys.executable, "GPU_CHECK_SECONDS": "1200", "VENV": str(venv)}
    script = REPO / "benchmarks" / "gpu_check.sh"
    wheels = _carried_wheels(tmp_path)
    result = subprocess.run(
        ["bash", str(script), "--device", "cpu", "--wheels", str(wheels), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
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
    # tritonclient imports in the venv over this machine's packages: deploy verifies, selects
    # and packages (a model repository with the fallback beside the selected variant).
    deployed = json.loads((folder / "deploy.json").read_text())
    assert deployed["selected"] and deployed.get("failed_stage") is None
    assert deployed["packaged"] and "package" not in deployed["skipped_stages"]
    assert "headline ratios:" in result.stdout  # the summary comes last

    env_info = json.loads((folder / "environment.json").read_text())
    assert env_info["python"]["prefix"] == str(venv)  # the steps ran in the carried wheels' venv
    code = "import dlkit_carry_probe; print(dlkit_carry_probe.VALUE)"
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert probe.stdout.strip() == "42"
    assert env_info["packages"]["torchao"].startswith("missing")  # hidden, as on the machine
    assert not env_info["packages"]["tritonclient"].startswith("missing")
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
    assert len(variants["goals"]) == 5
    serving = json.loads((folder / "serving" / "gpu_serving.json").read_text())
    assert [r["concurrency"] for r in serving["served"]] == [1, 4]
    assert all(r["throughput"] > 0 and r["failures"] == 0 for r in serving["served"])
    assert serving["ceiling"]["best"] > 0 and len(serving["goals"]) == 1
    assert "never_worse" in serving["tune"]
    package = (folder / "serving" / "logs" / "package.log").read_text()
    assert "--device cpu --backend python" in package
    assert "headline ratios:" in (folder / "summary.txt").read_text()


@pytest.mark.slow
def test_steps_runs_only_the_named_ones(tmp_path):
    env = os.environ | {"PYTHON": sys.executable}
    script = REPO / "benchmarks" / "gpu_check.sh"
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(script), "--device", "cpu", "--steps", "environment", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    rows = (tmp_path / "gpu_check" / "steps.tsv").read_text().splitlines()
    assert [row.split("\t")[:2] for row in rows] == [["environment", "ok"]]
    usage = subprocess.run(["bash", str(script), "--wheels"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
