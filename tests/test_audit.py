"""`dlkit serve` and `dlkit tune --repo` refuse a repository that holds what `dlkit package`
does not write (Triton would run it), unless --trust; checking only reads the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from toolkit.artifacts.metadata import DataSource
from toolkit.artifacts.torchscript import EXTRA_FILE, jit_deprecation_silenced
from toolkit.errors import DlkitError
from toolkit.triton.audit import check_repository
from toolkit.triton.configs import read_config, write_config
from toolkit.triton.repository import PackageOptions, package_artifact

PYTHON = PackageOptions(backend="python")


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class _Leaky(_Linear):
    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file(self.target, shared=True, size=1)
        return self.fc(x.flatten(1)) + leak.sum() * 0


@pytest.fixture
def files(tmp_path, make_info, make_linear_onnx) -> dict[str, Path]:
    """A tiny ONNX classifier, a TorchScript one, and a TorchScript one that leaks a file."""
    info = make_info("simplenet", 1, 16, 10, DataSource(dataset="digits"))
    paths = {"onnx": make_linear_onnx(tmp_path / "m.onnx", info)}
    with jit_deprecation_silenced():
        for name, module in (("ts", _Linear()), ("leaky", _Leaky(str(tmp_path / "secret")))):
            paths[name] = tmp_path / f"{name}.torchscript.pt"
            extra = {EXTRA_FILE: info.to_json()}
            torch.jit.save(torch.jit.script(module), str(paths[name]), _extra_files=extra)
    return paths


@pytest.fixture
def repo(tmp_path, files) -> Path:
    repo = tmp_path / "repo"
    package_artifact(
        files["onnx"], repo, "m", options=PackageOptions(backend="python", preprocess=True)
    )
    package_artifact(files["ts"], repo, "ts", options=PYTHON)
    package_artifact(files["onnx"], repo, "native")
    package_artifact(files["ts"], repo, "native_ts")
    return repo


ALL = ["m", "m_preprocess", "m_ensemble", "ts", "native", "native_ts"]


def _python_model(repo: Path, name: str, source: str = "import os\n") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(source)
    config = read_config(repo / "m_preprocess" / "config.pbtxt")  # python backend, model.py only
    config.name = name
    write_config(config, repo / name / "config.pbtxt")


def _set(repo: Path, model: str, **parameters: str) -> None:
    config = read_config(repo / model / "config.pbtxt")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    write_config(config, repo / model / "config.pbtxt")


TAMPERING = {
    "an extra python model": (lambda r: _python_model(r, "extra"), "extra", "python backends"),
    "a replaced model.py": (
        lambda r: (r / "m" / "1" / "model.py").write_text("import os\nos.system('true')\n"),
        "m",
        r"m/1/model\.py is not one of dlkit's python backends",
    ),
    "a module beside model.py": (
        lambda r: (r / "m" / "1" / "numpy.py").write_text("print('shadowed')\n"),
        "m",
        r"m/1/numpy\.py is a file dlkit does not write there",
    ),
    "a __pycache__": (
        lambda r: (r / "m" / "1" / "__pycache__").mkdir(),
        "m",
        r"__pycache__ is not a regular file",
    ),
    "another Python for the stub": (
        lambda r: _set(r, "m", EXECUTION_ENV_PATH="$$TRITON_MODEL_DIRECTORY/env.tar.gz"),
        "m",
        "parameters dlkit does not write",
    ),
    "artifact_file elsewhere": (
        lambda r: _set(r, "ts", artifact_file="/tmp/elsewhere.pt"),
        "ts",
        "is not a model file dlkit writes",
    ),
    "TorchScript named model.onnx": (
        lambda r: _set(r, "ts", artifact_format="torchscript", artifact_file="model.onnx"),
        "ts",
        "is not a model file dlkit writes",
    ),
    "an operator library": (
        lambda r: r.joinpath("native", "config.pbtxt").write_text(
            r.joinpath("native", "config.pbtxt").read_text()
            + '\nmodel_operations { op_library_filename: "/tmp/lib.so" }\n'
        ),
        "native",
        "operator libraries",
    ),
    "a warm-up that reads a file": (
        lambda r: r.joinpath("native", "config.pbtxt").write_text(
            r.joinpath("native", "config.pbtxt")
            .read_text()
            .replace("zero_data: true", 'input_data_file: "../../../../etc/hostname"')
        ),
        "native",
        "warm-up reads input files",
    ),
    "labels that are a link": (
        lambda r: (
            (r / "m" / "labels.txt").unlink()
            or (r / "m" / "labels.txt").symlink_to("/etc/hostname")
        ),
        "m",
        r"m/labels\.txt is a symbolic link",
    ),
    "a version folder that is a link": (
        lambda r: (r / "native" / "2").symlink_to(r / "native" / "1"),
        "native",
        r"native/2 is a symbolic link",
    ),
}


def test_what_dlkit_packaged_passes(repo):
    check_repository(repo, ALL)


@pytest.mark.parametrize("case", list(TAMPERING))
def test_what_dlkit_did_not_write_is_refused_unless_trusted(case, repo):
    tamper, model, expected = TAMPERING[case]
    tamper(repo)
    with pytest.raises(DlkitError, match=expected):
        check_repository(repo, [model])
    with pytest.raises(DlkitError, match="--trust"):
        check_repository(repo, [model])
    check_repository(repo, [model], trust=True)


def test_a_replaced_model_pt_is_checked_like_any_torchscript(repo, files):
    shutil.copyfile(files["leaky"], repo / "native_ts" / "1" / "model.pt")
    with pytest.raises(DlkitError, match=r"native_ts/1/model\.pt .*aten::from_file"):
        check_repository(repo, ["native_ts"])
    # packaged with --trust it is served only with --trust, too
    package_artifact(files["leaky"], repo, "leaky", options=PackageOptions(trust=True))
    with pytest.raises(DlkitError, match="aten::from_file"):
        check_repository(repo, ["leaky"])


def test_an_ensemble_brings_its_steps(repo):
    (repo / "m_preprocess" / "1" / "model.py").write_text("import os\n")
    with pytest.raises(DlkitError, match=r"m_preprocess/1/model\.py"):
        check_repository(repo, ["m_ensemble"])


def test_serve_and_tune_refuse_before_anything_runs_and_tune_only_reads(
    dlkit, repo, folder_snapshot
):
    payload = f"open({str(repo.parent / 'written')!r}, 'w')\n"
    _python_model(repo, "extra", payload)
    (repo / "m" / "1" / "model.py").write_text(payload)
    before = folder_snapshot(repo)
    result = dlkit("serve", "--repo", repo, "--model", "extra", expect=1)
    assert result.output.startswith("Error:") and "--trust" in result.output, result.output
    result = dlkit("tune", "--repo", repo, "--name", "m", "--budget-minutes", "0.1", expect=1)
    assert "m/1/model.py is not one of dlkit's python backends" in result.output
    assert folder_snapshot(repo) == before
    assert not (repo.parent / "written").exists()
    assert "--trust" in dlkit("serve", "--help").output
    assert "--trust" in dlkit("tune", "--help").output
