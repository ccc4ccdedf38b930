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
