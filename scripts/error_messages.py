"""Every `error:` line the CLIs (and the Makefile's targets) can print, collected from the source with `ast` (docs/troubleshooting.md is tested
against it: tests/test_docs.py).

A message is the first argument of a `raise UserError(...)` / `RunFailure(...)` (or a subclass), or an f-string
printed after `error: `. Its template keeps the literal text and writes each formatted value as `…`, so
`UserError(f"beta must be > 0, got {beta}")` is `beta must be > 0, got …`. A message passed on in a variable
(`raise UserError(problem)`) is collected where the variable was assigned a string in the same function.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("dpo_exp", "hydra_plugins")
BASES = {"UserError", "RunFailure"}
HOLE = "…"


@dataclass(frozen=True)
class Message:
    template: str  # literal text, each formatted value as `…`
    where: str  # path:line of the raise


def _template(node: ast.AST) -> str | None:
    """The text of a str expression with `…` for what is computed; None when nothing of it is literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return (left or HOLE) + (right or HOLE) if left or right else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "…%s…" % args
        left = _template(node.left)
        return re.sub(r"%[-0-9.]*[sdrfg]", HOLE, left) if left else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        left = _template(node.func.value)
        return re.sub(r"\{[^}]*\}", HOLE, left) if left else None
    if isinstance(node, ast.IfExp):  # both branches are messages: the caller takes the first literal one
        return _template(node.body) or _template(node.orelse)
    return None


def _error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """UserError, RunFailure and their subclasses (by name; subclasses of subclasses included)."""
    names = set(BASES)
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names:
                    if any(isinstance(b, ast.Name) and b.id in names for b in node.bases):
                        names.add(node.name)
                        changed = True
    return names


def _assigned(function: ast.AST, name: str) -> list[ast.AST]:
    """The values assigned to `name` inside one function (messages built before they are raised)."""
    values = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            values.append(node.value)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            values.append(node.value)
    return [v for v in values if v is not None]


def _returned(functions: dict[str, list[ast.AST]], call: ast.AST) -> list[ast.AST]:
    """The string values a called function returns (`problem = lora_targets_problem(...)`; `raise UserError(problem)`),
    found by the function's name anywhere in the sources."""
    if not isinstance(call, ast.Call):
        return [call]
    name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
    returns = [n.value for f in functions.get(name, []) for n in ast.walk(f) if isinstance(n, ast.Return) and n.value]
    return [value for r in returns for value in (r.values if isinstance(r, ast.BoolOp) else [r])]


def _messages_in(
    path: Path, tree: ast.Module, classes: set[str], functions: dict[str, list[ast.AST]], root: Path = ROOT
) -> list[Message]:
    found = []
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def scope(node: ast.AST) -> ast.AST:
        while node in parents and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node = parents[node]
        return node

    where = str(path.relative_to(root))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        arg = node.args[0]
        if name in classes:
            values = _assigned(scope(node), arg.id) if isinstance(arg, ast.Name) else [arg]
            candidates = [c for value in values for c in _returned(functions, value)]
            for value in candidates:
                for branch in (value.body, value.orelse) if isinstance(value, ast.IfExp) else (value,):
                    text = _template(branch)
                    if text and text.strip(HOLE + " :"):
                        found.append(Message(text, f"{where}:{node.lineno}"))
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):  # a line printed or returned as `error: ...` (hydra_callbacks, compare.failures)
        if isinstance(node, ast.JoinedStr | ast.Constant) and id(node) not in inner:
            text = _template(node)
            if text and text.startswith("error: ") and text.strip(HOLE + " :") != "error":
                found.append(Message(text.removeprefix("error: "), f"{where}:{node.lineno}"))
    return found


def collect(root: Path = ROOT) -> list[Message]:
    """Every message template, in source order."""
    trees = {
        p: ast.parse(p.read_text())
        for src in SOURCES
        for p in sorted((root / src).rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    classes = _error_classes(trees)
    functions: dict[str, list[ast.AST]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.setdefault(node.name, []).append(node)
    found = [m for path, tree in trees.items() for m in _messages_in(path, tree, classes, functions, root)]
    return found + _makefile_messages(root)


def _makefile_messages(root: Path) -> list[Message]:
    """`echo "error: ..."` lines of the Makefile's targets (make app)."""
    makefile = root / "Makefile"
    if not makefile.is_file():
        return []
    lines = makefile.read_text().splitlines()
    return [
        Message(match, f"Makefile:{number}")
        for number, line in enumerate(lines, 1)
        for match in re.findall(r'echo "error: ([^"$]+)"', line)
    ]


if __name__ == "__main__":
    for message in collect():
        print(f"{message.where}\t{message.template}")


DOCUMENTED = re.compile(r"^\|\s*(?:``\s?error: (.+?)\s?``|`error: ([^`]+)`)\s*\|", re.MULTILINE)
MIN_LITERAL = 6  # a documented key names at least this much fixed text, so that no entry can cover everything


def documented_keys(page_text: str) -> list[str]:
    """The messages a troubleshooting page documents: the `error: ...` code span opening each table row."""
    return [a or b for a, b in DOCUMENTED.findall(page_text)]


def covers(key: str, template: str) -> bool:
    """Whether a documented key is the beginning of a message template; `…` in the key stands for any text."""
    pattern = ".*?".join(re.escape(part) for part in key.split(HOLE))
    return re.match(pattern, template, re.DOTALL) is not None


def literal_length(key: str) -> int:
    return len(key.replace(HOLE, "").strip(" :=.,"))
