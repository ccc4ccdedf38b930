"""Carry the wheels the GPU machine lacks onto it, in device calls of at most 64 MiB each.

The GPU machine (Python 3.12, no network) has torch, onnxruntime's CPU build and numpy 2, but
no tritonserver, tritonclient or onnxruntime-gpu. One device call carries the working tree
plus at most 64 MiB in all, and files left on the machine survive between calls while it is
warm (it is handed back after about 30 s idle), so the wheels travel in consecutive calls:

    # here, once: download the wheels for Python 3.12, split and pack them into loads
    python benchmarks/carry_wheels.py download /tmp/wheels              # --set serving|onnx|all
    python benchmarks/carry_wheels.py plan /tmp/wheels --out .carry     # prints the calls

`plan` splits every wheel larger than a load into parts, packs parts and small wheels into
folders `.carry/load-1`, `.carry/load-2`, ... of at most `--budget-mib` (64) less the working
tree's size, and writes `manifest.txt` (SHA-256 of every wheel and of every part) into each.
It prints one device call per load, to be made back to back (the machine goes back after 30 s
idle): each names its load in `carry` and runs `bash benchmarks/install_wheels.sh stash
.carry/load-N` (moving the files out of the working tree into /tmp/dlkit-wheels); the last one
then runs `bash benchmarks/gpu_check.sh --wheels /tmp/dlkit-wheels $OUT` (`--then` changes
it), whose first step joins the parts with `cat`, checks every SHA-256 with `sha256sum -c` and
installs the wheels with `pip install --no-index --no-deps` into a virtual environment over the
machine's own packages (install_wheels.sh), in which every later step runs.

`.carry/` is ignored by git (.gitignore): the wheels travel as carried paths and are never
committed.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CALL_LIMIT_MIB = 64  # what one device call carries: the working tree and the carried paths
MARGIN_BYTES = 1 * MIB  # for files the tree gains between planning and the calls
# The packages the GPU machine lacks, for Python 3.12 (versions as measured together here).
# serving: the pip tritonserver (python backend) and the client dlkit imports (gRPC and HTTP),
# with numpy < 2 for the python backend's stub (numpy 2 answers empty outputs there).
SERVING = (
    "nvidia-pytriton==0.7.0",
    "tritonclient==2.73.0",
    "python-rapidjson==1.25",
    "geventhttpclient==2.6.1",
    "gevent==26.9.0",
    "greenlet==3.3.2",
    "zope.event==6.2",
    "zope.interface==8.7",
    "brotli==1.2.1",
    "pyzmq==27.3.0",
    "numpy==1.26.4",
)
ONNX = ("onnxruntime-gpu==1.31.1",)  # CUDA 13 build: cuDNN 9, cuFFT, cuRAND from torch's pip libs
SETS = {"serving": SERVING, "onnx": ONNX, "all": SERVING + ONNX}
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64")
PLATFORMS += ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


@dataclass
class Piece:
    """A file to carry: a whole wheel, or part `index` of a split one."""

    wheel: str
    name: str
    size: int
    offset: int = 0
    index: int | None = None  # None: the whole wheel


@dataclass
class Load:
    """What one device call carries."""

    pieces: list[Piece] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)


def cut(wheel: str, size: int, limit: int) -> list[Piece]:
    """A wheel of `size` bytes as pieces of at most `limit` bytes (itself when it fits)."""
    if limit < 1:
        raise ValueError("a load must hold at least one byte")
    if size <= limit:
        return [Piece(wheel, wheel, size)]
    count = -(-size // limit)
    return [
        Piece(wheel, f"{wheel}.part{i:02d}", min(limit, size - i * limit), i * limit, i)
        for i in range(count)
    ]


def pack(sizes: dict[str, int], limit: int) -> list[Load]:
    """Wheels (name -> bytes) cut and packed into as few loads of at most `limit` bytes as
    first-fit by decreasing size finds; a wheel's parts keep their order across loads."""
    pieces = [p for name, size in sizes.items() for p in cut(name, size, limit)]
    loads: list[Load] = []
    for piece in sorted(pieces, key=lambda p: -p.size):
        home = next((load for load in loads if load.size + piece.size <= limit), None)
        if home is None:
            home = Load()
            loads.append(home)
        home.pieces.append(piece)
    return loads


def tree_bytes(repo: Path = REPO) -> int:
    """What a device call carries besides the loads: tracked files, untracked ones git does
    not ignore, and a shared/ folder in the checkout (it travels, ignored or not)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (repo / n.decode()).stat().st_size for n in listed if n and (repo / n.decode()).is_file()
    )


def sha256(path: Path, offset: int = 0, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = path.stat().st_size - offset if size is None else size
        while left > 0:
            block = f.read(min(left, 8 * MIB))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def write_loads(wheels: Path, out: Path, limit: int) -> list[Load]:
    """Cut and pack every wheel in `wheels` into `out/load-N/`, each with the manifest."""
    sizes = {p.name: p.stat().st_size for p in sorted(wheels.glob("*.whl"))}
    if not sizes:
        raise SystemExit(f"no wheels in {wheels}; run `download` first")
    loads = pack(sizes, limit)
    shutil.rmtree(out, ignore_errors=True)
    lines = [f"{sha256(wheels / name)}  {name}" for name in sizes]
    for number, load in enumerate(loads, 1):
        folder = out / f"load-{number}"
        folder.mkdir(parents=True)
        for piece in load.pieces:
            with open(wheels / piece.wheel, "rb") as src, open(folder / piece.name, "wb") as dst:
                src.seek(piece.offset)
                dst.write(src.read(piece.size))
            if piece.index is not None:
                lines.append(f"{sha256(folder / piece.name)}  {piece.name}")
    for number in range(1, len(loads) + 1):
        (out / f"load-{number}" / "manifest.txt").write_text("\n".join(sorted(lines)) + "\n")
    return loads


def calls(out: str, count: int, then: str) -> list[str]:
    """The device calls, in order: each stashes its load; the last installs, then runs `then`."""
    commands = []
    for number in range(1, count + 1):
        command = f"bash benchmarks/install_wheels.sh stash {out}/load-{number}"
        if number == count:
            command += f" && {then}"
        commands.append(command)
    return commands


def download(folder: Path, which: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", *platforms]
    subprocess.run([*command, "-d", str(folder), *SETS[which]], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="pip download the wheels for Python 3.12 (here)")
    get.add_argument("folder", type=Path)
    get.add_argument("--set", choices=sorted(SETS), default="all")
    plan = sub.add_parser("plan", help="split and pack them into loads; print the device calls")
    plan.add_argument("folder", type=Path)
    plan.add_argument("--out", default=".carry", help="a folder in the repository, ignored by git")
    plan.add_argument("--budget-mib", type=float, default=CALL_LIMIT_MIB)
    plan.add_argument(
        "--then",
        default="bash benchmarks/gpu_check.sh --wheels /tmp/dlkit-wheels $OUT",
        help="what the last call runs once the wheels are installed",
    )
    args = parser.parse_args()
    if args.command == "download":
        download(args.folder, args.set)
        return
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{args.out}/load-1"], cwd=REPO)
    if ignored.returncode != 0:
        raise SystemExit(
            f"{args.out}/ is not ignored by git, so it would travel with every call: run "
            f"`echo /{args.out.strip('/')}/ >> .git/info/exclude` first"
        )
    limit = int(args.budget_mib * MIB) - tree_bytes() - MARGIN_BYTES
    loads = write_loads(args.folder, REPO / args.out, limit)
    print(f"{len(loads)} device call(s), each carrying at most {limit / MIB:.1f} MiB:")
    for number, (load, command) in enumerate(
        zip(loads, calls(args.out, len(loads), args.then), strict=True), 1
    ):
        print(f'\n# call {number}: carry ["{args.out}/load-{number}"] ({load.size / MIB:.1f} MiB)')
        print(command)


if __name__ == "__main__":
    main()
