"""The TorchScript code check: every statement of every function of every code file, with
each reference resolved by `ts_names`, refused unless it is allowed. Nothing is run.

`CodeChecker(defs, allowed, operator_names).check(tree)` collects findings (what is refused, in
a few words each); an archive is loadable only when no file gives any.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from toolkit.artifacts.ts_names import (
    CLASS_BASES,
    CONSTANT_NAMES,
    CUSTOM_CLASSES,
    EXCEPTIONS,
    MODULE_LISTS,
    NAMESPACES,
    RESERVED,
    SAFE_BUILTINS,
    TENSOR_PROPERTIES,
    TYPE_NAMES,
    ClassInfo,
    Definitions,
    as_attribute,
    definition_of,
    dotted,
    operator_of,
)

GENERICS = frozenset({"List", "Dict", "Optional", "Tuple", "Union", "Final"})
SIMPLE_STATEMENTS = (ast.Pass, ast.Break, ast.Continue)
OPERATOR_NAMESPACES = frozenset({"aten", "prim"})


@dataclass
class Scope:
    """One function: its class, its parameters' classes, and every value bound to each local
    (None where a name is bound by unpacking, a loop or an augmented assignment)."""

    cls: ClassInfo | None = None
    params: dict[str, ClassInfo | None] = field(default_factory=dict)
    bindings: dict[str, list[ast.expr | None]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.params or name in self.bindings


class CodeChecker:
    """Reads one archive's code; `findings` says what it refuses."""

    def __init__(self, defs: Definitions, allowed: frozenset[str], operator_names: frozenset[str]):
        self.defs, self.allowed, self.operator_names = defs, allowed, operator_names
        self.findings: set[str] = set()

    def refuse(self, what: str) -> None:
        self.findings.add(what)

    # ---------------------------------------------------------------------------- definitions

    def check(self, tree: ast.Module, prefix: str | None) -> None:
        if prefix is not None and prefix.startswith(CUSTOM_CLASSES):
            self.refuse(f"code for {prefix} (a C++ class name)")
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                name = f"{prefix}.{node.name}"
                self.check_class(node, self.defs.classes.get(name) or ClassInfo(name, "class"))
            elif isinstance(node, ast.FunctionDef):
                self.check_function(node, None)
            elif not _is_version_line(node):
                self.refuse(f"a top-level {type(node).__name__} statement")

    def check_class(self, node: ast.ClassDef, info: ClassInfo) -> None:
        bases_ok = len(node.bases) <= 1 and all(
            isinstance(b, ast.Name) and b.id in CLASS_BASES for b in node.bases
        )
        if node.decorator_list or node.keywords or not bases_ok:
            self.refuse(f"class {node.name} with decorators or other bases")
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef):
                self.check_function(stmt, info)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                self.type_expr(stmt.annotation)
                if stmt.value is not None:  # a constant or a NamedTuple default: evaluated
                    self.expr(stmt.value, Scope())
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                self.check_class_assign(stmt, info)
            elif not isinstance(stmt, ast.Pass):
                self.refuse(f"a {type(stmt).__name__} statement in class {node.name}")

    def check_class_assign(self, stmt: ast.Assign, info: ClassInfo) -> None:
        target, value = stmt.targets[0], stmt.value
        name = target.id if isinstance(target, ast.Name) else None
        strings = isinstance(value, ast.List) and all(_is_str(e) for e in value.elts)
        if name in MODULE_LISTS and strings:
            return
        if name == "__annotations__" and isinstance(value, (ast.List, ast.Dict)):
            return
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == "__annotations__"
            and _is_str(target.slice)
        ):
            self.type_expr(value)
            return
        literal = isinstance(value, ast.Constant) and isinstance(value.value, (int, float, str))
        if info.kind == "Enum" and name is not None and literal:
            return
        self.refuse(f"an assignment in the body of class {info.name}")

    def check_function(self, node: ast.FunctionDef, cls: ClassInfo | None) -> None:
        args = node.args
        if node.decorator_list or args.vararg or args.kwarg or args.posonlyargs:
            self.refuse(f"function {node.name} with decorators or */** parameters")
        scope = Scope(cls)
        for i, arg in enumerate([*args.args, *args.kwonlyargs]):
            self.store(arg.arg)
            if arg.annotation is not None:
                self.type_expr(arg.annotation)
            is_self = i == 0 and cls is not None
            scope.params[arg.arg] = cls if is_self else self.class_of_type(arg.annotation)
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:  # evaluated when the file is loaded
                self.expr(default, Scope())
        if node.returns is not None:
            self.type_expr(node.returns)
        scope.bindings = _bindings(node.body)
        for stmt in node.body:
            self.stmt(stmt, scope)

    # ------------------------------------------------------------------------------ statements

    def stmt(self, node: ast.stmt, scope: Scope) -> None:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self.target(target, scope)
            self.expr(node.value, scope)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            self.target(node.target, scope)
            if isinstance(node, ast.AnnAssign):
                self.type_expr(node.annotation)
            if node.value is not None:
                self.expr(node.value, scope)
        elif isinstance(node, (ast.Return, ast.Expr)):
            if node.value is not None:
                self.expr(node.value, scope)
        elif isinstance(node, (ast.If, ast.While, ast.For)):
            if isinstance(node, ast.For):
                self.target(node.target, scope)
                self.expr(node.iter, scope)
            else:
                self.expr(node.test, scope)
            for inner in [*node.body, *node.orelse]:
                self.stmt(inner, scope)
        elif isinstance(node, ast.Assert):
            self.expr(node.test, scope)
            if node.msg is not None:
                self.expr(node.msg, scope)
        elif isinstance(node, ast.Raise):
            self.check_raise(node, scope)
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                self.target(target, scope)
        elif not isinstance(node, SIMPLE_STATEMENTS):
            self.refuse(f"a {type(node).__name__} statement")

    def check_raise(self, node: ast.Raise, scope: Scope) -> None:
        exc = node.exc
        called = isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name)
        name = exc.func.id if called else getattr(exc, "id", None)
        if node.cause is not None or name not in EXCEPTIONS:
            self.refuse("a raise of something other than a plain exception")
        elif called:
            for arg in exc.args:
                self.expr(arg, scope)

    def target(self, node: ast.expr, scope: Scope) -> None:
        if isinstance(node, ast.Name):
            self.store(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                self.target(element, scope)
        elif isinstance(node, (ast.Subscript, ast.Attribute)):
            self.expr(node, scope)
        else:
            self.refuse(f"an assignment to {type(node).__name__}")

    def store(self, name: str) -> None:
        if name in RESERVED:
            self.refuse(f"a local named {name} (it would hide what TorchScript means by it)")

    # ----------------------------------------------------------------------------- expressions

    def expr(self, node: ast.expr, scope: Scope) -> None:
        pair = as_attribute(node)
        if pair is not None:
            self.attribute(node, pair, scope)
        elif isinstance(node, ast.Name):
            self.load(node.id, scope)
        elif isinstance(node, ast.Call):
            self.call(node, scope)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bytes):
                self.refuse("a bytes literal")
        elif isinstance(node, (ast.ListComp, ast.DictComp)):
            self.comprehension(node, scope)
        elif isinstance(node, _COMPOUND):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, scope)
                elif not isinstance(child, _OPERATORS):
                    self.refuse(f"{type(child).__name__} syntax")
        else:
            self.refuse(f"{type(node).__name__} syntax")

    def comprehension(self, node: ast.ListComp | ast.DictComp, scope: Scope) -> None:
        for generator in node.generators:
            self.target(generator.target, scope)
            self.expr(generator.iter, scope)
            for condition in generator.ifs:
                self.expr(condition, scope)
            if generator.is_async:
                self.refuse("an async comprehension")
        inner = Scope(scope.cls, dict(scope.params), dict(scope.bindings))
        for name in _names(node.generators):
            inner.bindings.setdefault(name, []).append(None)
        parts = [node.elt] if isinstance(node, ast.ListComp) else [node.key, node.value]
        for part in parts:
            self.expr(part, inner)

    def load(self, name: str, scope: Scope) -> None:
        if scope.has(name) or name in CONSTANT_NAMES:
            return
        self.refuse(f"the name {name} used as a value")

    def attribute(self, node: ast.expr, pair: tuple[ast.expr, str], scope: Scope) -> None:
        parts = dotted(node)
        root = parts[0] if parts and not scope.has(parts[0]) else None
        if root in NAMESPACES:
            op = operator_of(parts)
            if op is None:
                self.refuse(f"{'.'.join(parts)} (a namespace, not an operator)")
            elif not self.allowed_operator(op):
                self.refuse(op)
            return
        if root == "__torch__":
            if definition_of(parts, self.defs) is None:
                self.refuse(f"{'.'.join(parts)} (not defined in this file)")
            return
        if root == "CONSTANTS":
            if len(parts) != 2 or not re.fullmatch(r"c\d+", parts[1]):
                self.refuse(f"{'.'.join(parts)} (not a stored constant)")
            return
        value, name = pair
        self.expr(value, scope)
        cls = self.class_of(value, scope)
        if cls is not None and name in cls.members:
            return  # TorchScript looks members up first; other names fall through to aten
        if name in TENSOR_PROPERTIES or name in self.allowed or name not in self.operator_names:
            return
        self.refuse(f"aten::{name}")

    def allowed_operator(self, op: str) -> bool:
        namespace, _, name = op.partition("::")
        return namespace in OPERATOR_NAMESPACES and name in self.allowed

    def call(self, node: ast.Call, scope: Scope) -> None:
        func = node.func
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            self.refuse("a call with *args or **kwargs")
        values = [*node.args, *(k.value for k in node.keywords)]
        if isinstance(func, ast.Name) and not scope.has(func.id):
            values = self.builtin_call(func.id, node, values)
        elif isinstance(func, ast.Name):
            self.local_call(func.id, scope)
        elif as_attribute(func) is not None:
            self.expr(func, scope)
        else:
            self.refuse("a call of a computed value")
        for value in values:
            self.expr(value, scope)

    def builtin_call(self, name: str, node: ast.Call, values: list[ast.expr]) -> list[ast.expr]:
        """Check a call of a name TorchScript resolves outside the code; returns the
        arguments that are values (types are checked here)."""
        args = node.args
        if name in SAFE_BUILTINS:
            return values
        if name == "hasattr" and len(args) == 2 and _is_str(args[1]) and not node.keywords:
            return [args[0]]
        if name in ("annotate", "unchecked_cast") and len(args) == 2 and not node.keywords:
            self.type_expr(args[0])
            return [args[1]]
        if name == "isinstance" and len(args) == 2 and not node.keywords:
            self.type_expr(args[1])
            return [args[0]]
        if name == "uninitialized" and len(args) == 1 and not node.keywords:
            self.type_expr(args[0])
            return []
        self.refuse("getattr with a computed name" if name == "getattr" else f"{name}(...)")
        return values

    def local_call(self, name: str, scope: Scope) -> None:
        """A local is called only when every value bound to it is an allowed operator or an
        archive function or class (TorchScript's printer writes `_0 = __torch__...f`)."""
        bound = scope.bindings.get(name, [])
        if name in scope.params or not bound or not all(self.callable(v) for v in bound):
            self.refuse(f"a call of the local {name}")

    def callable(self, value: ast.expr | None) -> bool:
        parts = dotted(value) if value is not None else None
        if not parts:
            return False
        if parts[0] in NAMESPACES:
            op = operator_of(parts)
            return op is not None and self.allowed_operator(op)
        return parts[0] == "__torch__" and definition_of(parts, self.defs) is not None

    # ---------------------------------------------------------------------------------- types

    def type_expr(self, node: ast.expr | None) -> None:
        if node is None or (isinstance(node, ast.Constant) and node.value is None):
            return
        if isinstance(node, ast.Name):
            if node.id not in TYPE_NAMES:
                self.refuse(f"the type {node.id}")
        elif isinstance(node, ast.Subscript):
            if not (isinstance(node.value, ast.Name) and node.value.id in GENERICS):
                self.refuse("a subscripted type other than List, Dict, Optional, Tuple, Union")
            self.type_expr(node.slice)
        elif isinstance(node, ast.Tuple):
            for element in node.elts:
                self.type_expr(element)
        else:
            parts = dotted(node)
            if not (parts and parts[0] == "__torch__" and ".".join(parts) in self.defs.classes):
                self.refuse(f"the type {ast.unparse(node)[:80]}")

    def class_of_type(self, node: ast.expr | None) -> ClassInfo | None:
        """The archive class a type annotation names (a class or module, not a tuple)."""
        parts = dotted(node) if node is not None else None
        cls = self.defs.classes.get(".".join(parts)) if parts and parts[0] == "__torch__" else None
        return cls if cls is not None and cls.kind in ("class", "Module") else None

    def class_of(self, node: ast.expr, scope: Scope, seen: frozenset = frozenset()):
        """The archive class of an expression's value as TorchScript types it (declared
        types only), or None when it is not one or cannot be told."""
        if isinstance(node, ast.Name):
            found = [scope.params[node.id]] if node.id in scope.params else []
            for value in scope.bindings.get(node.id, []):
                known = value is not None and node.id not in seen
                found.append(self.class_of(value, scope, seen | {node.id}) if known else None)
            return found[0] if found and all(c is found[0] for c in found) else None
        pair = as_attribute(node)
        if pair is not None:
            owner = self.class_of(pair[0], scope, seen)
            declared = owner.attribute_types.get(pair[1]) if owner is not None else None
            return self.class_of_type(declared)
        if isinstance(node, ast.Call):
            parts = dotted(node.func)
            if parts and parts[0] == "__torch__" and not scope.has("__torch__"):
                return self.class_of_type(node.func)  # a constructor
        return None


_OPERATORS = (ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.expr_context)
_COMPOUND = (
    ast.List, ast.Tuple, ast.Dict, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
    ast.Subscript, ast.Slice,
)  # fmt: skip


def _is_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_version_line(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "op_version_set"
        and isinstance(node.value, ast.Constant)
        and type(node.value.value) is int
    )


def _names(nodes) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bindings(body: list[ast.stmt]) -> dict[str, list[ast.expr | None]]:
    """Every local of a function body with what is bound to it (flow-insensitive)."""
    found: dict[str, list[ast.expr | None]] = {}
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Assign):
            simple = len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
            for target in node.targets:
                for name in _stored(target):
                    found.setdefault(name, []).append(node.value if simple else None)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.comprehension)):
            simple = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            for name in _stored(node.target):
                found.setdefault(name, []).append(node.value if simple else None)
    return found


def _stored(target: ast.expr) -> list[str]:
    return [
        n.id for n in ast.walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    ]
