"""Writing files on a full disk (a small tmpfs mounted for the purpose): every command ends in
one `Error:` line naming the file and the full disk, and leaves no half-written file behind
(`toolkit.files.atomic_path`, and `dlkit package` all or nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import DlkitError, os_error_message

FULL = "No space left on device (the disk is full; free space or write elsewhere)"


@pytest.fixture(scope="module")
def onnx_file(digits_checkpoint, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from toolkit.cli import cli

    out = tmp_path_factory.mktemp("files")
    args = ["export", str(digits_checkpoint), "--onnx", "--out", str(out)]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    return out / "digits.onnx"


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_the_message_names_the_final_file_not_a_temporary_one():
    exc = OSError(28, "No space left on device")
    assert os_error_message(exc, writing="/r/.m.tmp-12/1/.model.onnx.tmp-12") == (
        f"cannot write /r/m/1/model.onnx: {FULL}"
    )
    exc = OSError(30, "Read-only file system", "/ro/.out.tmp-7")
    assert os_error_message(exc) == "/ro/out: Read-only file system (that file system is " + (
        "read-only; write elsewhere)"
    )


@pytest.mark.slow
def test_export_on_a_full_disk_is_one_error_not_an_abort(digits_checkpoint, small_disk):
    """torch.jit.save aborted the process (exit 134) and left its temporary file."""
    size = 0
    for room, failing in ((200_000, "digits.onnx"), (400_000, "digits.torchscript.pt")):
        disk = small_disk(room)
        command = [sys.executable, "-m", "toolkit", "export", str(digits_checkpoint)]
        done = subprocess.run([*command, "--out", disk], capture_output=True, text=True)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == f"Error: cannot write {disk / failing}: {FULL}"
        kept = files_in(disk)
        assert kept == ([] if failing == "digits.onnx" else ["digits.onnx"])
        size = max(size, sum((disk / f).stat().st_size for f in kept))
    assert size > 0  # the second disk held the ONNX file whole


def test_package_on_a_full_disk_writes_all_of_it_or_nothing(dlkit, onnx_file, small_disk):
    """The classifier, its preprocessing model and the ensemble: the disk fills at each step
    in turn; either all three are written or the repository is not there at all."""
    base = onnx_file.stat().st_size
    outcomes = set()
    for extra in range(0, 36_000, 4096):
        disk = small_disk(base + extra)
        result = dlkit(
            "package", onnx_file, "--repo", disk / "r", "--backend", "python", "--preprocess",
            expect=None,
        )  # fmt: skip
        if result.exit_code == 0:
            models = {p.name for p in (disk / "r").iterdir() if not p.name.startswith(".")}
            assert models == {"digits", "digits_preprocess", "digits_ensemble"}
            outcomes.add("written")
        else:
            assert result.output.startswith("Error: cannot write ") and FULL in result.output
            assert result.output.count("\n") == 1 and os.listdir(disk) == [], result.output
            outcomes.add(result.output.split("/r/")[1].split("/")[0])  # the model that failed
    assert {"digits", "digits_preprocess", "digits_ensemble", "written"} <= outcomes, outcomes


def test_package_into_a_full_repository_leaves_it_as_it_was(dlkit, onnx_file, small_disk):
    """A new version that does not fit: the versions and config already there are kept."""
    disk = small_disk(onnx_file.stat().st_size + 40_000)
    dlkit("package", onnx_file, "--repo", disk / "r", "--backend", "python", "--preprocess")
    before = {f: (disk / f).read_bytes() for f in files_in(disk)}
    result = dlkit("package", onnx_file, "--repo", disk / "r", "--backend", "python", expect=1)
    assert result.output == f"Error: cannot write {disk / 'r' / 'digits' / '2'}: {FULL}\n"
    assert {f: (disk / f).read_bytes() for f in files_in(disk)} == before


@pytest.mark.parametrize("command", ["quantize", "k8s", "data", "bench", "predict"])
def test_commands_on_a_full_disk_end_in_one_error_line(
    dlkit, onnx_file, digits_dir, small_disk, tmp_path, command
):
    disk = small_disk(16_384)
    image = next(iter(sorted((digits_dir / "val").rglob("*.png"))))
    repo = tmp_path / "repo"
    if command == "k8s":
        dlkit("package", onnx_file, "--repo", repo, "--backend", "python")
    args = {
        "quantize": ["quantize", onnx_file, "--mode", "dynamic", "--out", disk / "q.onnx"],
        "k8s": ["k8s", "--repo", repo, "--out", disk / "k8s"],
        "data": ["data", "digits", disk / "digits"],
        "bench": ["bench", onnx_file, "--batch-sizes", "1", "--iters", "5", "--max-time", "1",
                  "--report", disk / "bench"],
        "predict": ["predict", onnx_file, *[image] * 40, "--grid", disk / "grid.png"],
    }[command]  # fmt: skip
    if command == "predict":  # a grid needs more than a few images to outgrow the disk
        (disk / "filler").write_bytes(b"\0" * 12_000)
    result = dlkit(*args, expect=1)
    last = result.output.strip().splitlines()[-1]  # after the progress lines on stderr
    assert last.startswith("Error: cannot write ") and last.endswith(FULL), result.output
    assert result.output.count("Error") == 1 and "Traceback" not in result.output
    assert files_in(disk) == (["filler"] if command == "predict" else [])


def test_atomic_path_turns_an_os_error_into_one_naming_the_target(tmp_path):
    from toolkit.files import atomic_path

    target = tmp_path / "out.txt"
    expected = f"cannot write {target}: No space left on device"
    with pytest.raises(DlkitError, match=expected), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------ paths


def _k8s_repo(root: Path) -> Path:
    """A minimal model repository (one python-backend model) for `dlkit k8s`."""
    from tritonclient.grpc import model_config_pb2 as mc

    from toolkit.triton.configs import write_config

    (root / "m" / "1").mkdir(parents=True)
    write_config(mc.ModelConfig(name="m", backend="python"), root / "m" / "config.pbtxt")
    return root


def test_k8s_out_paths_that_cannot_be_written_are_refused_first(dlkit, tmp_path, monkeypatch):
    repo = _k8s_repo(tmp_path / "repo")
    (tmp_path / "work" / "sub").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path / "work" / "sub")
    cases = {
        ".": "holds the folder you are working in",
        "..": "holds the folder you are working in",
        str(tmp_path / "dangling"): "is a symbolic link; give the file or folder itself",
        str(tmp_path / "link"): "is a symbolic link; give the file or folder itself",
        "x" * 300: "is 300 bytes; file systems take 255 at most",
        os.fsdecode(b"bad\xff"): r"b'bad\xff' is not UTF-8 text",
    }
    for out, message in cases.items():
        for force in ([], ["--force"]):
            result = dlkit("k8s", "--repo", repo, "--out", out, *force, expect=1)
            assert result.output.startswith("Error: --out") and message in result.output, out
            assert result.output.count("\n") == 1
    assert os.listdir(tmp_path / "work" / "sub") == [] and os.listdir(tmp_path / "real") == [
        "keep.txt"
    ]
    assert not (tmp_path / "nowhere").exists()


def test_package_never_writes_through_a_linked_model_folder(dlkit, onnx_file, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "repo" / "digits").symlink_to(tmp_path / "outside")
    result = dlkit(
        "package", onnx_file, "--repo", tmp_path / "repo", "--backend", "python", expect=1
    )
    assert f"{tmp_path / 'repo' / 'digits'} is a symbolic link" in result.output
    assert os.listdir(tmp_path / "outside") == []
    (tmp_path / "repo" / "digits").unlink()  # an ensemble folder linked away: refused too
    (tmp_path / "repo" / "digits_ensemble").symlink_to(tmp_path / "outside")
    args = ["package", onnx_file, "--repo", tmp_path / "repo", "--backend", "python"]
    result = dlkit(*args, "--preprocess", expect=1)
    assert "digits_ensemble is a symbolic link" in result.output
    assert os.listdir(tmp_path / "outside") == [] and not (tmp_path / "repo" / "digits").exists()


def test_predict_grid_never_replaces_a_file_unasked(dlkit, onnx_file, digits_dir, tmp_path):
    image = next(iter(sorted((digits_dir / "val").rglob("*.png"))))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = dlkit("predict", onnx_file, image, "--grid", notes, expect=1)
    assert result.output == f"Error: --grid {notes} exists; pass --force to replace it\n"
    assert notes.read_text() == "my notes"
    dlkit("predict", onnx_file, image, "--grid", notes, "--force")
    assert notes.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_deploy_into_a_read_only_folder_is_one_error(dlkit, digits_checkpoint, tmp_path):
    where = tmp_path / "ro"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=65536", "tmpfs", where],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        result = dlkit(
            "deploy", digits_checkpoint, "--out", where / "run", "--repo", tmp_path / "repo",
            "--no-smoke-test", expect=1,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "--lazy", where], check=True)
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "Read-only file system" in last, result.output
    assert "Traceback" not in result.output and not (tmp_path / "repo").exists()


def test_serve_with_a_log_it_cannot_write_fails_at_once(dlkit, tmp_path, monkeypatch):
    """--log-file /dev/full: tritonserver ran on, writing nowhere (over 60 s to notice)."""
    import tempfile

    from tritonclient.grpc import model_config_pb2 as mc

    from toolkit.triton.configs import write_config

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "1" / "model.py").write_text("")
    write_config(
        mc.ModelConfig(name="m", backend="python"), tmp_path / "repo" / "m" / "config.pbtxt"
    )
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    # --trust: the empty model.py is no dlkit backend, and the repository check would come
    # first; the log is what this test is about.
    result = dlkit(
        "serve", "--repo", tmp_path / "repo", *ports, "--log-file", "/dev/full", "--trust",
        expect=1,
    )  # fmt: skip
    assert result.output.strip().splitlines()[-1] == f"Error: cannot write /dev/full: {FULL}"
    assert os.listdir(tmp_path / "tmp") == []  # the server's private folder is gone too


# --------------------------------------------------------------------- leftovers of killed runs


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_private_folders_of_killed_runs_are_removed_by_the_next(tmp_path, monkeypatch):
    """`/tmp/dlkit-quant-*` (tune, bench, ...) of a SIGKILLed run stayed forever."""
    import tempfile

    from toolkit import processes
    from toolkit.files import private_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"dlkit-quant-{_dead_pid()}.12345-abcd"
    live = tmp_path / f"dlkit-quant-{processes.tag()}-efgh"
    legacy, other = tmp_path / "dlkit-quant-x1y2", tmp_path / f"dlkit-bench-{_dead_pid()}.1-ab"
    for folder in (dead, live, legacy, other):
        (folder / "model").mkdir(parents=True)
    with private_folder("dlkit-quant-") as mine:
        assert mine.is_dir() and mine.name.startswith(f"dlkit-quant-{processes.tag()}-")
        assert not dead.exists() and live.exists() and legacy.exists() and other.exists()
    assert not mine.exists()


def test_leftovers_of_dead_writers_are_removed_and_of_live_ones_kept(tmp_path):
    from toolkit.files import remove_leftovers

    dead = tmp_path / f".best.pt.tmp-{_dead_pid()}"
    dead.write_bytes(b"half")
    (tmp_path / f".m.tmp-{_dead_pid()}").mkdir()
    live = tmp_path / f".last.pt.tmp-{os.getpid()}"
    live.write_bytes(b"being written")
    removed = remove_leftovers(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
