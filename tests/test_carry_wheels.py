"""Carrying wheels to the GPU machine (benchmarks/carry_wheels.py, install_wheels.sh): how wheels
are cut and packed into loads under the per-call limit, and the machine's half run here for
real on a wheel made by the test: loads stashed one call at a time, parts joined with cat,
SHA-256 checked, installed with pip --no-index --no-deps into a venv over this environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "install_wheels.sh"
MIB = 1 << 20


def _load_carry():
    spec = importlib.util.spec_from_file_location(
        "carry_wheels", REPO / "benchmarks" / "carry_wheels.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


carry = _load_carry()


def test_a_wheel_larger_than_a_load_is_cut_in_order():
    assert [(p.name, p.size) for p in carry.cut("a.whl", 10, 10)] == [("a.whl", 10)]
    parts = carry.cut("a.whl", 25, 10)
    assert [(p.name, p.offset, p.size, p.index) for p in parts] == [
        ("a.whl.part00", 0, 10, 0),
        ("a.whl.part01", 10, 10, 1),
        ("a.whl.part02", 20, 5, 2),
    ]


def test_the_real_set_fits_in_the_fewest_calls():
    # The sizes of the wheels as downloaded for Python 3.12 (bytes).
    sizes = {
        "onnxruntime_gpu.whl": 255_569_273,
        "nvidia_pytriton.whl": 55_369_373,
        "numpy.whl": 17_950_613,
        "gevent.whl": 2_201_889,
        "python_rapidjson.whl": 1_761_284,
        "brotli.whl": 1_420_478,
        "pyzmq.whl": 855_178,
        "greenlet.whl": 613_875,
        "zope_interface.whl": 284_199,
        "geventhttpclient.whl": 163_072,
        "tritonclient.whl": 108_282,
        "zope_event.whl": 6_525,
    }
    limit = 61 * MIB
    loads = carry.pack(sizes, limit)
    assert all(load.size <= limit for load in loads)
    assert len(loads) == -(-sum(sizes.values()) // limit)  # no call more than needed
    carried = sorted(p.name for load in loads for p in load.pieces)
    assert len(carried) == len(set(carried)) == len(sizes) - 1 + 4  # onnxruntime: 4 parts
    serving = {k: v for k, v in sizes.items() if k != "onnxruntime_gpu.whl"}
    assert len(carry.pack(serving, limit)) == 2


def test_the_last_call_installs_and_runs_the_check():
    commands = carry.calls(".carry", 3, "bash benchmarks/gpu_check.sh --wheels W $OUT")
    assert commands[:2] == [
        "bash benchmarks/install_wheels.sh stash .carry/load-1",
        "bash benchmarks/install_wheels.sh stash .carry/load-2",
    ]
    assert commands[2].endswith("load-3 && bash benchmarks/gpu_check.sh --wheels W $OUT")


def _probe_wheel(folder: Path, payload: bytes) -> Path:
    """A real (pure-Python) wheel: module dlkit_carry_probe with `payload` as data."""
    path = folder / "dlkit_carry_probe-1.0-py3-none-any.whl"
    info = "dlkit_carry_probe-1.0.dist-info"
    files = {
        "dlkit_carry_probe/__init__.py": b"VALUE = 42\n",
        "dlkit_carry_probe/payload.bin": payload,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: dlkit-carry-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _sh(*args: str | Path, expect: int = 0) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True
    )
    assert result.returncode == expect, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_loads_carried_one_by_one_are_joined_checked_and_installed(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _probe_wheel(wheels, os.urandom(300_000))  # incompressible: the wheel is ~300 KB
    loads = carry.write_loads(wheels, tmp_path / "carry", limit=120_000)
    assert len(loads) == 3  # the wheel travels in three parts, one per call
    stash, venv = tmp_path / "stash", tmp_path / "venv"
    for number in range(1, len(loads) + 1):
        _sh("stash", tmp_path / "carry" / f"load-{number}", stash)
        assert not any((tmp_path / "carry" / f"load-{number}").iterdir())  # moved, not copied
    result = _sh("install", stash, venv)
    python = result.stdout.strip().splitlines()[-1]
    assert python == str(venv / "bin" / "python")
    code = "import dlkit_carry_probe, pytest, sys; print(dlkit_carry_probe.__file__)"
    where = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv))  # from the venv, this environment's pytest too
    # The first site folder on the venv's path is its own: what was carried comes first.
    first = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert first.stdout.startswith(str(venv))


@pytest.mark.slow
def test_a_damaged_or_missing_part_stops_the_install_by_name(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _probe_wheel(wheels, os.urandom(200_000))
    carry.write_loads(wheels, tmp_path / "carry", limit=120_000)
    stash = tmp_path / "stash"
    _sh("stash", tmp_path / "carry" / "load-1", stash)
    result = _sh("install", stash, tmp_path / "venv", expect=3)  # load-2 never came
    assert "part01" in result.stdout + result.stderr
    assert "carry its load again" in result.stderr
    _sh("stash", tmp_path / "carry" / "load-2", stash)
    part = next(stash.glob("*.part01"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    result = _sh("install", stash, tmp_path / "venv", expect=3)
    assert "part01: FAILED" in result.stdout
    assert not (tmp_path / "venv").exists()
    result = _sh("stash", tmp_path / "nothing", stash, expect=2)
    assert "name the load in the call's carry" in result.stderr
