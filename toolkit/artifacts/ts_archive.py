"""A TorchScript file checked as `torch.jit.load` will read it: the same bytes, the same zip
reader, every code file and every pickle in it. Nothing is loaded or run.

`torch.jit.load` reads a file as a flatbuffer (mobile) module when bytes 4-8 say "PTMF" and as a
zip archive otherwise, with torch's own zip reader (which matches names without regard to case).
So dlkit reads the file's bytes once, refuses flatbuffers, reads the records through torch's
reader, checks every code file (`ts_code`) and every pickle (the classes it may create are the
archive's own, whose code is checked; no C++ classes), and then loads those same bytes.
"""

from __future__ import annotations

import ast
import functools
import io
import pickletools
import re
import warnings

from toolkit.artifacts.ts_code import CodeChecker
from toolkit.artifacts.ts_names import (
    CUSTOM_CLASSES,
    Definitions,
    collect_definitions,
    lexical_problem,
    qualifier,
)
from toolkit.errors import DlkitError

FLATBUFFER_MAGIC = b"PTMF"  # at bytes 4-8: torch.jit.load then ignores any zip in the file
ZIP_MAGIC = b"PK\x03\x04"
MAX_CODE_BYTES = 64 * 1024 * 1024
# What torch's unpickler builds besides the archive's classes: tensors, storages, containers.
PICKLE_GLOBALS = frozenset(
    {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch.jit._pickle build_intlist",
        "torch.jit._pickle build_doublelist",
        "torch.jit._pickle build_boollist",
        "torch.jit._pickle build_tensorlist",
        "torch.jit._pickle restore_type_tag",
    }
)
STORAGE_GLOBAL = re.compile(r"torch [A-Za-z0-9]+Storage")
PICKLE_CLASS_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ"})


def read_records(data: bytes) -> dict[str, bytes]:
    """The code and pickle records of a TorchScript zip, as torch's reader returns them.
    Raises DlkitError (without the path) for anything torch.jit.load would read otherwise."""
    import torch

    if data[4:8] == FLATBUFFER_MAGIC:
        raise DlkitError("is a flatbuffer (mobile) TorchScript module, which dlkit does not load")
    if not data.startswith(ZIP_MAGIC):
        raise DlkitError("is not a TorchScript archive (a zip file from torch.jit.save)")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        names = reader.get_all_records()
    except Exception as exc:
        raise DlkitError(f"is not a readable TorchScript archive ({exc})") from None
    if len({n.lower() for n in names}) != len(names):
        raise DlkitError("has records whose names differ only in case (or repeat)")
    if reader.has_record("model.json"):
        raise DlkitError("is a TorchScript archive in the legacy format, which dlkit does not load")
    wanted = [n for n in names if n.endswith((".py", "pkl"))]
    if sum(reader.get_record_size(n) for n in wanted) > MAX_CODE_BYTES:
        raise DlkitError("has implausibly much code; not reading it")
    return {n: reader.get_record(n) for n in wanted}


def archive_findings(records: dict[str, bytes], allowed: frozenset[str]) -> list[str]:
    """What in an archive's code and pickles the check refuses (empty: nothing)."""
    findings: list[str] = []
    trees: dict[str, ast.Module] = {}
    for name, raw in records.items():
        if not name.endswith(".py"):
            continue
        try:
            text = raw.decode("ascii")
            problem = lexical_problem(text)
            if problem is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # an odd escape: TorchScript refuses it
                    trees[name] = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError,
                Warning) as exc:  # fmt: skip
            problem = f"code that cannot be read ({type(exc).__name__})"
        if problem is not None:
            findings.append(f"{name}: {problem}")
    defs = collect_definitions(trees)
    checker = CodeChecker(defs, allowed, operator_names())
    for name, tree in trees.items():
        try:
            checker.check(tree, qualifier(name))
        except RecursionError:
            findings.append(f"{name}: code nested too deeply to check")
    findings += sorted(checker.findings)
    for name, raw in records.items():
        if name.endswith("pkl"):
            findings += pickle_findings(name, raw, defs)
    return findings


def pickle_findings(name: str, raw: bytes, defs: Definitions) -> list[str]:
    """Globals a pickle names that torch's unpickler would build and dlkit does not allow."""
    found = []
    try:
        for opcode, arg, _ in pickletools.genops(raw):
            if opcode.name in PICKLE_CLASS_OPCODES:
                found.append(f"{name}: a {opcode.name} pickle instruction")
            elif opcode.name == "GLOBAL" and not _allowed_global(str(arg), defs):
                found.append(f"{name}: builds {arg}")
    except Exception as exc:  # pickletools raises ValueError and others on malformed input
        found.append(f"{name}: a pickle that cannot be read ({type(exc).__name__})")
    return found


def _allowed_global(arg: str, defs: Definitions) -> bool:
    if arg in PICKLE_GLOBALS or STORAGE_GLOBAL.fullmatch(arg):
        return True
    qualified = arg.replace(" ", ".")  # "__torch__.a.b C" -> an archive class
    return qualified in defs.classes and not qualified.startswith(CUSTOM_CLASSES)


@functools.cache
def operator_names() -> frozenset[str]:
    """The names of every operator registered with TorchScript (any namespace)."""
    import torch

    return frozenset(s.name.partition("::")[2] for s in torch._C._jit_get_all_schemas())
