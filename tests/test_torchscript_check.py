"""The TorchScript code check reads code as code: hostile files written every way that got past
the old text match are refused, the payload never runs, and real exports still load.

Each hostile file is built here, in a temporary folder, from a small scripted classifier whose
code record is rewritten; its payload (`torch.from_file(T, True, 4)` creates the file T) is
shown to run when the file is loaded without the check (`trust`), always inside tmp_path.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from toolkit.artifacts.metadata import DataSource
from toolkit.artifacts.torchscript import (
    EXTRA_FILE,
    check_code,
    jit_deprecation_silenced,
    load_torchscript,
)
from toolkit.errors import DlkitError


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def base(tmp_path, make_info) -> Path:
    """A harmless scripted, frozen classifier with dlkit metadata (1×16×16 in, 10 classes)."""
    info = make_info("simplenet", 1, 16, 10, DataSource(dataset="digits"))
    path = tmp_path / "base.torchscript.pt"
    with jit_deprecation_silenced():
        module = torch.jit.freeze(torch.jit.script(M()).eval())
        torch.jit.save(module, str(path), _extra_files={EXTRA_FILE: info.to_json()})
    return path


def _code_record(path: Path) -> str:
    return next(n for n in zipfile.ZipFile(path).namelist() if n.endswith(".py"))


def _rewrite(base: Path, out: Path, code: str, extra: dict[str, str] | None = None) -> Path:
    """`base` with its one code record replaced by `code` (debug records dropped: they
    would not match) and `extra` code records added (paths under code/)."""
    record = _code_record(base)
    prefix = record.split("/", 1)[0]
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            data = code.encode() if info.filename == record else source.read(info)
            target.writestr(info.filename, data)
        for name, text in (extra or {}).items():
            target.writestr(f"{prefix}/code/{name}", text)
    return out


def _class(base: Path) -> str:
    """The qualified class name of the base module, as its code names itself."""
    record = _code_record(base)
    return record.split("/code/", 1)[1].removesuffix(".py").replace("/", ".") + ".M"


def _payload(call: str, target: Path, indent: str = "    ") -> str:
    """`call` creates `target`; the result is used, so that no pass removes the call."""
    return (
        f'{indent}_p = {call}("{target}", True, 4)\n'
        f"{indent}if bool(torch.gt(torch.sum(_p), 1000.)):\n"
        f'{indent}  ops.prim.RaiseException("no", "builtins.RuntimeError")\n'
        f"{indent}else:\n{indent}  pass\n"
    )


def _module(cls: str, forward_body: str, more: str = "", params: str = "x: Tensor") -> str:
    return (
        "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"
        f"  def forward(self: {cls},\n    {params}) -> Tensor:\n{forward_body}"
        "    _1 = torch.flatten(x, 1)\n"
        "    return torch.linear(_1, CONSTANTS.c0, CONSTANTS.c1)\n" + more
    )


def _hostile(name: str, base: Path, target: Path) -> tuple[str, dict[str, str]]:
    """The code (and extra code files) of one way of spelling the payload."""
    cls = _class(base)
    setstate = (
        f"  def __getstate__(self: {cls}) -> Dict[str, int]:\n"
        "    return annotate(Dict[str, int], {})\n"
        f"  def __setstate__(self: {cls}, state: Dict[str, int]) -> NoneType:\n"
        + _payload("torch .from_file", target)
        + "    return None\n"
    )
    helper = f"  def helper(self: {cls}, x: Tensor) -> Tensor:\n" + _payload(
        'getattr(torch, "from_file")', target
    )
    nested = (  # a class in another code file, built and called by forward
        "class Evil:\n"
        "  def __init__(self: __torch__.evil.Evil) -> NoneType:\n    return None\n"
        "  def forward(self: __torch__.evil.Evil, x: Tensor) -> Tensor:\n"
        + _payload("ops.aten.autograd.from_file", target)
        + "    return x\n"
    )
    default = f'x: Tensor, y: Tensor=torch.from_file("{target}", True, 4)'
    spellings = {
        "respaced": (_module(cls, _payload("torch .from_file", target)), {}),
        "alias": (_module(cls, "    _f = torch.from_file\n" + _payload("_f", target)), {}),
        "getattr": (_module(cls, _payload('getattr(torch, "from_file")', target)), {}),
        "autograd": (_module(cls, _payload("torch.autograd.from_file", target)), {}),
        "ops": (_module(cls, _payload("ops.aten.from_file", target)), {}),
        "setstate": (_module(cls, "", setstate), {}),
        "other_method": (
            _module(cls, "    x = (self).helper(x, )\n", helper + "    return x\n"),
            {},
        ),
        "nested_module": (
            _module(cls, "    x = (__torch__.evil.Evil()).forward(x, )\n"),
            {"__torch__/evil.py": nested},
        ),
        "default_argument": (_module(cls, "", params=default), {}),
    }
    return spellings[name]


SPELLINGS = [
    "respaced",
    "alias",
    "getattr",
    "autograd",
    "ops",
    "setstate",
    "other_method",
    "nested_module",
    "default_argument",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_each_spelling_of_a_payload_runs_when_trusted_and_is_refused_otherwise(
    spelling, base, tmp_path
):
    target = tmp_path / "written-by-the-model"
    code, extra = _hostile(spelling, base, target)
    path = _rewrite(base, tmp_path / f"{spelling}.torchscript.pt", code, extra)
    with pytest.raises(DlkitError, match=r"from_file.*--trust"):
        check_code(path)
    with pytest.raises(DlkitError, match="from_file"):
        load_torchscript(path)
    assert not target.exists()
    # The file is real: loaded without the check, in this temporary folder, its payload runs.
    module, _ = load_torchscript(path, trust=True)
    module(torch.zeros(1, 1, 16, 16))
    assert target.exists()


def test_eval_refuses_a_respaced_payload_and_it_never_runs(dlkit, base, tmp_path):
    target = tmp_path / "written-by-the-model"
    code, _ = _hostile("respaced", base, target)
    path = _rewrite(base, tmp_path / "hostile.torchscript.pt", code)
    result = dlkit("eval", path, expect=1)
    assert result.output.startswith("Error:") and "aten::from_file" in result.output
    assert not target.exists()


def test_a_flatbuffer_module_with_a_harmless_zip_appended_is_refused(dlkit, base, tmp_path):
    """torch.jit.load reads such a file as the flatbuffer (bytes 4-8 say PTMF); a zip reader
    sees only the harmless archive at its end."""
    target = tmp_path / "written-by-the-model"
    code, _ = _hostile("respaced", base, target)
    hostile = _rewrite(base, tmp_path / "src.torchscript.pt", code)
    module, _ = load_torchscript(hostile, trust=True)  # the forward is not run here
    buffer = io.BytesIO()
    with jit_deprecation_silenced():
        torch.jit.save_jit_module_to_flatbuffer(module, buffer)
    mixed = tmp_path / "mixed.torchscript.pt"
    mixed.write_bytes(buffer.getvalue() + base.read_bytes())
    assert zipfile.ZipFile(mixed).namelist() == zipfile.ZipFile(base).namelist()
    result = dlkit("eval", mixed, expect=1)
    assert "flatbuffer" in result.output, result.output
    with pytest.raises(DlkitError, match="flatbuffer"):
        load_torchscript(mixed)
    assert not target.exists()
    with jit_deprecation_silenced():  # what torch.jit.load really runs: the flatbuffer
        torch.jit.load(str(mixed))(torch.zeros(1, 1, 16, 16))
    assert target.exists()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("    _0 = print(x)\n", r"print\(\.\.\.\)"),
        ("    _0 = fork(__torch__.f, x)\n", r"the name fork|fork\(\.\.\.\)"),
        ("    _0 = torch.save(x, 'f')\n", "aten::save"),
        ("    _0 = (x).save('f')\n", "aten::save"),
        ("    _0 = ops.c10d.barrier()\n", "c10d::barrier"),
        ("    _t = torch\n", "the name torch used as a value"),
        ("    torch = x\n", "a local named torch"),
        ("    _0 = getattr(torch, 'from_' + 'file')\n", "computed name"),
        ("    _0 = [torch.relu][0](x)\n", "computed value"),
        ("    _0 = torch.classes.dist_c10d.FileStore('f', 1)\n", "namespace, not an operator"),
        ("    _0 = __torch__.torch.classes.x.Y()\n", "not defined in this file"),
        ("    _0 = torch.relu(x) # type: ignore\n", "comment"),
        ("    _0 = torch.relu(x)\r    _1 = torch.zeros(1)\n", "read differently"),
        ("    _0 = f'{x}'\n", "prefixed string"),
        ("    _0 = \uff54orch.from_file('f', True, 4)\n", "non-ASCII|cannot be read"),
        ("    _0 = torch.warn('\\q')\n", "cannot be read"),
        ("    _0 = lambda: x\n", "Lambda"),
        ("    with torch.no_grad():\n      pass\n", "With"),
    ],
)
def test_other_ways_out_are_refused_before_anything_loads(base, tmp_path, code, expected):
    path = _rewrite(base, tmp_path / "odd.torchscript.pt", _module(_class(base), code))
    with pytest.raises(DlkitError, match=expected):
        check_code(path)


def test_archives_torch_would_read_otherwise_are_refused(base, tmp_path):
    source = zipfile.ZipFile(base)
    record = _code_record(base)
    # Two records whose names differ only in case: torch's reader finds either for both.
    twin = tmp_path / "twin.torchscript.pt"
    with zipfile.ZipFile(twin, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        target.writestr(record.replace("code/", "CODE/"), "class M(Module):\n  pass\n")
    with pytest.raises(DlkitError, match="differ only in case"):
        check_code(twin)
    # A pickle that builds a C++ class (their __setstate__ is C++ code dlkit cannot read).
    data = source.read(next(n for n in source.namelist() if n.endswith("/data.pkl")))
    custom = data.replace(b"c__torch__.", b"c__torch__.torch.classes.", 1)
    odd = tmp_path / "custom.torchscript.pt"
    with zipfile.ZipFile(odd, "w") as target:
        for info in source.infolist():
            payload = custom if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info.filename, payload)
    with pytest.raises(DlkitError, match=r"builds __torch__\.torch\.classes"):
        check_code(odd)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_classifiers_traced_or_scripted_pass_the_check(name, tmp_path):
    import torchvision

    model = getattr(torchvision.models, name)(num_classes=10).eval()
    example = torch.zeros(2, 3, 64, 64)
    with jit_deprecation_silenced():
        for how, module in (
            ("trace", torch.jit.trace(model, example, check_trace=False)),
            ("script", torch.jit.script(model)),
        ):
            frozen = torch.jit.freeze(module.eval())
            for tag, saved in (("frozen", frozen), ("plain", module)):
                path = tmp_path / f"{how}-{tag}.pt"
                torch.jit.save(saved, str(path))
                if (name, how, tag) == ("efficientnet_b0", "script", "plain"):
                    # stochastic depth in training mode calls torch.empty (memory not
                    # initialised, which a model could hand back): refused
                    with pytest.raises(DlkitError, match="aten::empty"):
                        check_code(path)
                else:
                    check_code(path)
