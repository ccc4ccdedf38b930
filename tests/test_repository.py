"""`dlkit package`: configs through Triton's protobuf, one config per model and what a new
version may change, concurrent writers, and everything written checked against what Triton
accepts (names, versions, dims, labels, external data, TorchScript code)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts.metadata import DataSource
from toolkit.artifacts.onnx import write_info
from toolkit.artifacts.torchscript import EXTRA_FILE, jit_deprecation_silenced
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
    assert config.HasField("dynamic_batching")  # on, with no queue delay (the default)
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
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
    assert out["unservable_here"] == {}  # the pip server has the python backend
    config = read_config(repo / "best_torchscript" / "config.pbtxt")
    assert config.backend == "python" and config.instance_group[0].count == 2
    assert sorted(p.name for p in (repo / "best_torchscript" / "1").iterdir()) == [
        "model.pt",
        "model.py",
        "runner.py",  # the format plugin's stub runner, beside the classifier
    ]
    result = dlkit("package", tiny_exports["onnx"], "--repo", repo, "--name", "bad name", expect=1)
    assert result.output.startswith("Error: model name 'bad name'")


def test_package_warns_when_the_local_server_cannot_serve_it(dlkit, exports, tmp_path):
    repo = tmp_path / "repo"
    result = dlkit("package", exports["onnx"], "--repo", repo, "--preprocess", "--name", "m")
    out = dlkit.json("package", exports["onnx"], "--repo", repo, "--name", "m")
    assert "no onnxruntime backend" in out["unservable_here"]["m"]
    assert "`dlkit serve` here cannot serve m: this tritonserver has no onnxruntime" in (
        result.stderr
    )
    assert "cannot serve m_ensemble: its step model m cannot be served" in result.stderr


# --------------------------------------------------------------------------------- versions


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
    with pytest.raises(DlkitError, match=r"cannot write .*m/3: disk full"):
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
    with pytest.raises(DlkitError, match="format 'onnx' -> 'torchscript'"):
        package_artifact(tiny_exports["torchscript"], repo, "m")
    with pytest.raises(DlkitError, match="is a checkpoint"):
        package_artifact(tiny_run["best_checkpoint"], repo, "c")
    assert not list(repo.rglob(".*tmp*"))


def _serving_part(path: Path) -> mc.ModelConfig:
    """A config file without the metadata that records each version."""
    return _without_metadata(read_config(path))


def _without_metadata(config: mc.ModelConfig) -> mc.ModelConfig:
    for key in ("dlkit", "dlkit_versions"):
        del config.parameters[key]
    return config


def test_versions_share_one_config_that_only_replace_config_changes(
    exports, tmp_path, folder_snapshot
):
    repo = tmp_path / "repo"
    package_artifact(exports["onnx"], repo, "m")
    serving = _serving_part(repo / "m" / "config.pbtxt")
    assert package_artifact(exports["onnx"], repo, "m").config_changes == ""
    assert _serving_part(repo / "m" / "config.pbtxt") == serving  # only the versions' metadata
    before = folder_snapshot(repo)
    # Another format, or another backend, cannot share the config: refused, naming the way out.
    with pytest.raises(DlkitError, match=r"format 'onnx' -> 'torchscript'.*--name m_torchscript"):
        package_artifact(exports["torchscript"], repo, "m")
    with pytest.raises(DlkitError, match=r"backend 'onnxruntime_onnx' -> 'python'.*m_python"):
        package_artifact(exports["onnx"], repo, "m", options=PackageOptions(backend="python"))
    # Other serving options would change how version 1 runs: refused unless asked for.
    busier = PackageOptions(serving=ServingOptions(instances=2, max_queue_delay_us=100))
    with pytest.raises(DlkitError, match=r"instances '1' -> '2'.*--replace-config"):
        package_artifact(exports["onnx"], repo, "m", options=busier)
    assert folder_snapshot(repo) == before
    replacing = PackageOptions(serving=busier.serving, replace_config=True)
    result = package_artifact(exports["onnx"], repo, "m", options=replacing)
    assert result.version == 3 and "instances '1' -> '2'" in result.config_changes
    assert "max_queue_delay_us '0' -> '100'" in result.config_changes
    assert read_config(repo / "m" / "config.pbtxt").instance_group[0].count == 2
    assert package_artifact(exports["onnx"], repo, "m", options=busier).version == 4


def test_package_onto_a_model_takes_its_backend_unless_told(dlkit, exports, tmp_path):
    repo = tmp_path / "repo"
    python = PackageOptions(backend="python")
    package_artifact(exports["onnx"], repo, "classifier", options=python)  # as deploy does here
    out = dlkit("package", exports["onnx"], "--repo", repo, "--name", "classifier").output
    assert f"-> {repo / 'classifier' / '2'}" in out
    assert "backend python, as classifier's versions have (--backend to choose)" in out
    assert dlkit.json("package", exports["onnx"], "--repo", repo, "--name", "classifier")["models"][
        0
    ]["backend_from_model"]
    # Told another backend, the refusal names the option that fits.
    result = dlkit(
        "package", exports["onnx"], "--repo", repo, "--name", "classifier", "--backend",
        "native", expect=1,
    )  # fmt: skip
    assert "Its versions run on the python backend: package with --backend python" in (
        result.output
    )
    # A new model still defaults to the native backend.
    assert (
        dlkit.json("package", exports["onnx"], "--repo", repo, "--name", "fresh")["models"][0][
            "platform"
        ]
        == "onnxruntime_onnx"
    )


def _other_provenance(source: str, target: Path) -> Path:
    """A copy of an ONNX file whose metadata says it came from another checkpoint."""
    from toolkit.artifacts import read_info

    shutil.copyfile(source, target)
    info = read_info(source).derive(source_checkpoint="/elsewhere/other.pt", source_sha256="f" * 64)
    write_info(target, info)
    return target


def test_the_config_says_what_each_version_is(exports, tmp_path):
    import json

    from toolkit.artifacts import read_info
    from toolkit.triton.versions import version_info

    repo = tmp_path / "repo"
    first, second = exports["onnx"], _other_provenance(exports["onnx"], tmp_path / "second.onnx")
    package_artifact(first, repo, "m")
    serving = read_config(repo / "m" / "config.pbtxt")
    assert version_info(serving, "1").source_sha256 == read_info(first).source_sha256
    package_artifact(second, repo, "m")
    config = read_config(repo / "m" / "config.pbtxt")
    assert version_info(config, "1").source_sha256 == read_info(first).source_sha256
    assert version_info(config, "2").source_sha256 == "f" * 64
    assert json.loads(config.parameters["dlkit"].string_value)["source_sha256"] == "f" * 64
    # Only the metadata changed: how every version is served did not.
    assert _serving_part(repo / "m" / "config.pbtxt") == _without_metadata(serving)


def test_a_version_the_policy_will_not_serve_is_warned_about(dlkit, exports, tmp_path):
    from toolkit.triton.configs import write_config

    repo = tmp_path / "repo"
    for _ in range(2):
        package_artifact(exports["onnx"], repo, "faces")
    config = read_config(repo / "faces" / "config.pbtxt")
    config.version_policy.specific.versions[:] = [1]  # a rollback to version 1
    write_config(config, repo / "faces" / "config.pbtxt")
    out = dlkit.json("package", exports["onnx"], "--repo", repo, "--name", "faces")
    [model] = out["models"]
    assert model["version"] == 3 and model["served_versions"] == [1]
    assert out["warnings"] == [
        f"version 3 of faces will not be served: {repo / 'faces' / 'config.pbtxt'} has "
        "version_policy specific { versions: [1] }; add 3 there to serve it"
    ]
    # The policy survives the new version, even one that replaces the serving options.
    busier = PackageOptions(serving=ServingOptions(instances=2), replace_config=True)
    package_artifact(exports["onnx"], repo, "faces", options=busier)
    assert list(read_config(repo / "faces" / "config.pbtxt").version_policy.specific.versions) == [
        1
    ]
    text = dlkit(
        "package", exports["onnx"], "--repo", repo, "--name", "faces", "--instances", "2"
    ).output
    assert "Triton serves versions 1 of faces (its version_policy)" in text


def test_a_running_dlkit_serve_on_the_repository_is_found(tmp_path):
    import json

    from toolkit.triton.lifetime import OWNER_FILE, WORKDIR_PREFIX, running_servers, start_time

    me = [os.getpid(), start_time(os.getpid())]  # a live "server": this process
    for name, repo, server in (
        ("live", tmp_path / "repo", me),
        ("other", tmp_path / "other", me),
        ("gone", tmp_path / "repo", [2**22 + 1, "0"]),
    ):
        folder = tmp_path / f"{WORKDIR_PREFIX}{name}"
        folder.mkdir()
        serving = {"repository": str(repo.resolve()), "http": "127.0.0.1:8000"}
        record = {"dlkit": me, "server": server, "serving": serving}
        (folder / OWNER_FILE).write_text(json.dumps(record))
    found = running_servers(tmp_path / "repo", root=tmp_path)
    assert found == [
        {
            "repository": str((tmp_path / "repo").resolve()),
            "http": "127.0.0.1:8000",
            "pid": os.getpid(),
        }
    ]


def test_deploy_keeps_the_serving_options_a_model_has(exports, tmp_path):
    from toolkit.deploy import DeployConfig
    from toolkit.deploy.report import DeployReport
    from toolkit.deploy.selection import VariantReport
    from toolkit.deploy.serving import package_stage
    from toolkit.triton.server import find_tritonserver

    repo = tmp_path / "repo"
    backend = "python" if "onnxruntime" not in find_tritonserver().backends() else "native"
    tuned = ServingOptions(instances=3, threads=1, max_queue_delay_us=700)
    package_artifact(exports["onnx"], repo, "classifier", options=PackageOptions(backend, tuned))
    variant = VariantReport("onnx-fp32", "onnx", "fp32", 0, path=exports["onnx"])
    report = DeployReport(config={}, run_dir=str(tmp_path))
    config = DeployConfig(repo=str(repo), name="classifier")
    [written] = package_stage(config, variant, variant, report)
    assert written["version"] == 2 and written["config_changes"] == ""
    assert report.repository_changed
    assert read_config(repo / "classifier" / "config.pbtxt").instance_group[0].count == 3


def test_what_a_killed_writer_left_behind_is_removed(exports, tmp_path):
    """kill -9 in the middle of `dlkit package` leaves its hidden temporary folder; the next
    run removes it (a live writer's is kept)."""
    repo = tmp_path / "repo"
    package_artifact(exports["onnx"], repo, "m")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    leftovers = [repo / f".n.tmp-{dead}" / "1", repo / "m" / f".2.tmp-{dead}"]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
    # Another live writer's (this process rewrites config.pbtxt itself, under its own pid).
    live = repo / "m" / f".config.pbtxt.tmp-{os.getppid()}"
    live.write_text("being written")
    assert package_artifact(exports["onnx"], repo, "m").version == 2
    assert not (repo / f".n.tmp-{dead}").exists() and not leftovers[1].exists()
    assert live.exists()


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_not_made(exports, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    (repo / ".dlkit-lock").symlink_to(target)
    with pytest.raises(DlkitError, match=r"\.dlkit-lock is a symbolic link; remove it"):
        package_artifact(exports["onnx"], repo, "m")
    assert not target.exists() and sorted(p.name for p in repo.iterdir()) == [".dlkit-lock"]


@pytest.mark.slow
def test_concurrent_package_runs_each_get_a_version(exports, tmp_path):
    repo = tmp_path / "repo"
    command = [sys.executable, "-m", "toolkit", "package", exports["onnx"], "--repo", str(repo)]
    command += ["--name", "m", "--backend", "python", "--preprocess", "--json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs += [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err for _, err in outputs]
    assert sorted(p.name for p in (repo / "m").iterdir()) == [
        "1", "2", "3", "4", "config.pbtxt", "labels.txt",
    ]  # fmt: skip
    models = sorted(p.name for p in repo.iterdir())
    assert models == [".dlkit-lock", "m", "m_ensemble", "m_preprocess"]


# ------------------------------------------------------------------- what Triton accepts


def test_versions_names_and_options_are_bounded(dlkit, exports, tmp_path):
    repo = tmp_path / "repo"
    result = dlkit("package", exports["onnx"], "--repo", repo, "--version", "9" * 20, expect=2)
    assert "--version" in result.output and not repo.exists()
    with pytest.raises(DlkitError, match="from 1 to 2147483647"):
        package_artifact(exports["onnx"], repo, "m", version=2**31)
    for name in ("abc\n", "../m", ".hidden", "a" * 129, "m/1", "m n"):
        with pytest.raises(DlkitError, match="model name"):
            package_artifact(exports["onnx"], repo, name, version=1)
    with pytest.raises(DlkitError, match="at most 117 characters"):  # + "_preprocess"
        options = PackageOptions(backend="python", preprocess=True)
        package_artifact(exports["onnx"], repo, "a" * 120, options=options)
    bad = [
        {"instances": 0}, {"instances": 65}, {"threads": -1}, {"max_queue_delay_us": 10**8},
        {"max_batch_size": 70000}, {"preferred_batch_sizes": (0,)},
    ]  # fmt: skip
    for options in bad:
        with pytest.raises(DlkitError, match="must be a whole number"):
            ServingOptions(**options)
    assert dlkit("package", exports["onnx"], "--repo", repo, "--instances", "0", expect=2)
    assert not (repo / "m").exists() and not (repo / ("a" * 120)).exists()
    # Only ASCII digits number a version ("²" is a digit to str.isdigit, not to int()).
    (repo / "u" / "²").mkdir(parents=True)
    assert package_artifact(exports["onnx"], repo, "u").version == 1
    # A version folder beyond what Triton numbers stops numbering there.
    (repo / "n" / str(2**31 - 1)).mkdir(parents=True)
    with pytest.raises(DlkitError, match="beyond what Triton reads"):
        package_artifact(exports["onnx"], repo, "n")


def test_metadata_that_disagrees_with_the_model_is_refused(exports, tmp_path, make_info):
    from toolkit.artifacts.onnx import read_info

    info = read_info(exports["onnx"])
    fewer = info.derive(classes=tuple(f"c{i}" for i in range(5)))  # the model answers 10
    crafted = tmp_path / "crafted.onnx"
    shutil.copyfile(exports["onnx"], crafted)
    write_info(crafted, fewer)
    with pytest.raises(DlkitError, match=r"answers \(10,\) outputs but its metadata lists 5"):
        package_artifact(crafted, tmp_path / "repo", "m")
    scripted = tmp_path / "crafted.torchscript.pt"
    _rewrite_torchscript_info(exports["torchscript"], scripted, fewer.to_json())
    with pytest.raises(DlkitError, match=r"answers \(1, 10\) for a batch of 1, but its metadata"):
        package_artifact(scripted, tmp_path / "repo", "m")
    huge = info.derive(static_batch=10**9).to_json()
    _rewrite_torchscript_info(exports["torchscript"], scripted, huge)
    with pytest.raises(DlkitError, match="fixed batch of 1000000000"):
        package_artifact(scripted, tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m").exists()


def _rewrite_torchscript_info(source: str, target: Path, info_json: str) -> None:
    """A copy of a TorchScript file whose dlkit metadata says something else."""
    with jit_deprecation_silenced():
        module = torch.jit.load(source)
        torch.jit.save(module, str(target), _extra_files={EXTRA_FILE: info_json})


def test_onnx_with_external_data_is_refused(exports, tmp_path):
    model = onnx.load(exports["onnx"])
    folder = tmp_path / "split"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip
    with pytest.raises(DlkitError, match=r"keeps \d+ tensor\(s\) in separate files"):
        package_artifact(folder / "m.onnx", tmp_path / "repo", "m")
    (folder / "weights.bin").unlink()  # missing weights: refused the same way
    with pytest.raises(DlkitError, match="ONNX external data"):
        package_artifact(folder / "m.onnx", tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m").exists()


# ------------------------------------------------------------------------ hostile TorchScript


class _Hostile(torch.nn.Module):
    """A classifier whose forward maps a file it was never meant to touch."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file(self.target, shared=True, size=1)
        return self.fc(x.flatten(1)) + leak.sum() * 0


class _Slow(torch.nn.Module):
    """A classifier whose forward runs for seconds: only allowed operators, in a long loop
    (one that never ends would hang Triton's warm-up the same way)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = x + 0.0
        return self.fc(x.flatten(1))


def test_torchscript_whose_forward_does_not_finish_is_refused_in_time(tmp_path, make_info):
    from toolkit.artifacts.isolated import timeout_scope

    info = make_info("simplenet", 1, 16, 10, DataSource(dataset="digits"))
    path = tmp_path / "slow.torchscript.pt"
    with jit_deprecation_silenced():
        module = torch.jit.script(_Slow(steps=10**15))  # only allowed operators, for ever
        torch.jit.save(module, str(path), _extra_files={EXTRA_FILE: info.to_json()})
    started = time.perf_counter()
    with timeout_scope(5), pytest.raises(DlkitError, match=r"did not finish within 5 s"):
        package_artifact(path, tmp_path / "repo", "m")
    assert time.perf_counter() - started < 60  # the child running it was stopped
    assert not (tmp_path / "repo" / "m").exists()


@pytest.mark.slow
def test_hostile_torchscript_is_refused_by_every_command_unless_trusted(
    dlkit, tmp_path, make_info, digit_images
):
    target = tmp_path / "secret.bin"
    target.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    stamp = target.stat().st_mtime_ns, target.read_bytes()
    info = make_info("simplenet", 1, 16, 10, DataSource(dataset="digits"))
    path = tmp_path / "hostile.torchscript.pt"
    with jit_deprecation_silenced():
        module = torch.jit.script(_Hostile(str(target)))
        torch.jit.save(module, str(path), _extra_files={EXTRA_FILE: info.to_json()})
    repo = tmp_path / "repo"
    for command in (
        ["package", path, "--repo", repo],
        ["eval", path],
        ["predict", path, digit_images[0]],
        ["bench", path, "--batch-sizes", "1", "--iters", "5"],
    ):
        result = dlkit(*command, expect=1)
        assert "from_file" in result.output and "--trust" in result.output, (command, result.output)
    # quantize takes ONNX only: it refuses TorchScript before reading its code.
    assert "export to ONNX first" in dlkit("quantize", path, "--mode", "dynamic", expect=1).output
    assert (target.stat().st_mtime_ns, target.read_bytes()) == stamp
    assert not repo.exists()
    assert dlkit.json("package", path, "--repo", repo, "--trust")["models"][0]["version"] == 1
    assert 0 <= dlkit.json("eval", path, "--trust")["accuracy"] <= 1
