"""Names in TorchScript code: what each name, attribute and call in an archive's code
resolves to, found without running any of it (`ts_code` walks the code with these).

`torch.jit.load` compiles the archive's `code/` files (Python syntax, TorchScript meaning),
runs the `__setstate__` of the objects it unpickles and the defaults of their functions; the
caller then runs `forward` and whatever it calls. So every function of every file is read, and
each reference is resolved as TorchScript's importer resolves it:

- `torch.X`, `torch.autograd.X`, `ops.aten.X`, `ops.NS.autograd.X`: the operator aten::X;
  `ops.NS.X`: NS::X. Wherever it appears (called, aliased, passed): allowed or refused.
- `__torch__.a.b.C`: a class or function the archive defines (its code is read too); anything
  else, custom C++ classes (`torch.classes`) included, is refused.
- `v.name` and `getattr(v, "name")`: a member of `v`'s class when `v` is of an archive class
  (as declared: `self`, annotated parameters, declared attributes), otherwise the operator
  aten::name unless no operator has that name (then it is a member or a compile error).
- a bare name: a local, one of a few builtins (`len`, `int`, `range`, ...), or refused
  (`print`, `fork`, ...); a local is called only when every value bound to it is a function
  or operator that is itself allowed.

The text must read the same to both parsers: printable ASCII and newlines, no comments
(TorchScript reads `# type:` comments as code), no string prefixes, no line continuations.
Whatever this module cannot resolve to something allowed is refused.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field

NAMESPACES = ("torch", "ops")  # roots that name operators


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


SAFE_BUILTINS = _words(
    "int float bool str len range min max abs tuple list dict all any sum enumerate zip round"
)
SPECIAL_FORMS = _words("getattr hasattr isinstance annotate unchecked_cast uninitialized")
CONSTANT_NAMES = _words("inf nan infj nanj")
# Names TorchScript resolves outside the code: binding one locally would change what it means.
RESERVED = (
    _words("torch ops __torch__ CONSTANTS fork awaitable print hex oct hash id divmod ord chr "
           "bin pow rangelist sorted complex _to_tensor")
    | SAFE_BUILTINS | SPECIAL_FORMS | CONSTANT_NAMES
)  # fmt: skip
TYPE_NAMES = _words(
    "Tensor int float bool str complex NoneType Any Device number List Dict "
    "Optional Tuple Union Final"
)
EXCEPTIONS = _words("AssertionError Exception RuntimeError ValueError")
TENSOR_PROPERTIES = _words("shape dtype device ndim is_cuda requires_grad")
CLASS_BASES = frozenset({"Module", "NamedTuple", "Enum", "Interface", "ModuleInterface"})
MODULE_LISTS = frozenset(
    {"__parameters__", "__buffers__", "__forward_hooks__", "__forward_pre_hooks__"}
)
CUSTOM_CLASSES = ("__torch__.torch.classes", "torch.classes")
_LEXICAL = re.compile(r"[^\n\x20-\x7e]")


@dataclass
class ClassInfo:
    """What an archive class declares: its kind, its members, its attributes' types."""

    name: str
    kind: str  # "class", "Module", or one of CLASS_BASES
    members: set[str] = field(default_factory=set)
    attribute_types: dict[str, ast.expr] = field(default_factory=dict)


@dataclass
class Definitions:
    """Every class and function the archive's code files define, by qualified name."""

    classes: dict[str, ClassInfo] = field(default_factory=dict)
    functions: set[str] = field(default_factory=set)


def lexical_problem(text: str) -> str | None:
    """Why `text` might read differently to TorchScript's lexer and Python's, or None."""
    odd = _LEXICAL.search(text)
    if odd:
        return f"a character TorchScript and Python read differently ({odd.group()!r})"
    if "\\\n" in text:
        return "a line continuation"
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        return f"code Python cannot read ({exc})"
    for token in tokens:
        if token.type == tokenize.COMMENT:
            return "a comment (TorchScript reads '# type:' comments as code)"
        if token.type == tokenize.STRING and token.string[0] not in "\"'":
            return f"a prefixed string ({token.string[:10]})"
    return None


def qualifier(record: str) -> str | None:
    """`code/__torch__/a/b.py` -> `__torch__.a.b`, the name TorchScript loads it under."""
    if not (record.startswith("code/") and record.endswith(".py")):
        return None
    return record[len("code/") : -len(".py")].replace("/", ".")


def collect_definitions(trees: dict[str, ast.Module]) -> Definitions:
    """The classes and functions of every code file (by record name -> parsed tree)."""
    defs = Definitions()
    for record, tree in trees.items():
        prefix = qualifier(record)
        if prefix is None:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                defs.functions.add(f"{prefix}.{node.name}")
            elif isinstance(node, ast.ClassDef):
                info = _class_info(f"{prefix}.{node.name}", node)
                defs.classes[info.name] = info
    return defs


def _class_info(name: str, node: ast.ClassDef) -> ClassInfo:
    bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
    info = ClassInfo(name, bases[0] if len(bases) == 1 else "class")
    hooks = set()
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and _target_name(stmt) in MODULE_LISTS - {
            "__parameters__",
            "__buffers__",
        }:
            hooks |= {e.value for e in getattr(stmt.value, "elts", []) if _is_str(e)}
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name not in hooks:
            info.members.add(stmt.name)  # hooks are not methods: `self.hook` is no member
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if stmt.value is None:  # `name : T` declares an attribute; `name : T = v` a constant
                info.members.add(stmt.target.id)
                info.attribute_types[stmt.target.id] = stmt.annotation
        elif isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Subscript):
            key = stmt.targets[0].slice  # __annotations__["0"] = T
            if _is_str(key):
                info.members.add(key.value)
                info.attribute_types[key.value] = stmt.value
    return info


def _target_name(stmt: ast.Assign) -> str | None:
    target = stmt.targets[0] if len(stmt.targets) == 1 else None
    return target.id if isinstance(target, ast.Name) else None


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def as_attribute(node: ast.AST) -> tuple[ast.expr, str] | None:
    """(value, name) for `value.name` and `getattr(value, "name")`, else None."""
    if isinstance(node, ast.Attribute):
        return node.value, node.attr
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) == 2
        and not node.keywords
        and _is_str(node.args[1])
    ):
        return node.args[0], node.args[1].value
    return None


def dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` (through getattr too) as ["a", "b", "c"] when it starts at a bare name."""
    parts: list[str] = []
    while (pair := as_attribute(node)) is not None:
        node, name = pair
        parts.append(name)
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def operator_of(parts: list[str]) -> str | None:
    """The operator `torch.X` / `ops.NS.X` (with `autograd` hops) names, as "ns::X"."""
    namespace, rest = ("aten", parts[1:]) if parts[0] == "torch" else (None, parts[1:])
    if namespace is None:
        if not rest:
            return None
        namespace, rest = rest[0], rest[1:]
    while rest and rest[0] == "autograd":  # BuiltinModule.attr("autograd") is aten again
        namespace, rest = "aten", rest[1:]
    return f"{namespace}::{rest[0]}" if len(rest) == 1 else None


def definition_of(parts: list[str], defs: Definitions) -> tuple[str, str | None] | None:
    """The archive definition a `__torch__...` chain names, as (qualified name, member or
    None), following TorchScript: the first prefix that is a definition wins."""
    for i in range(2, len(parts) + 1):
        name = ".".join(parts[:i])
        if name.startswith(CUSTOM_CLASSES):
            return None
        rest = parts[i:]
        if name in defs.functions:
            return (name, None) if not rest else None
        if name in defs.classes:
            info = defs.classes[name]
            if not rest:
                return name, None
            return (name, rest[0]) if len(rest) == 1 and rest[0] in info.members else None
    return None


def walk_functions(tree: ast.Module) -> Iterator[tuple[ast.FunctionDef, ast.ClassDef | None]]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node, None
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.FunctionDef):
                    yield stmt, node
