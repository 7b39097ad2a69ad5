"""The package stays readable: no module over ~300 lines, no function over ~60 (measured with `ast`), and the
module map of docs/development.md names every module and package of dpo_exp."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dpo_exp"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_over_300_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (lines): {long}"


def test_no_function_over_60_lines():
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # decorators excluded, docstring included
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert not long, f"split these functions (lines): {long}"


def test_module_map_matches_the_tree():
    page = (ROOT / "docs" / "development.md").read_text()
    block = page.split("<!-- module map -->", 2)[1].split("```")[1]  # the fenced tree after the marker
    named = set(re.findall(r"^ +(\w+(?:\.py|/))", block, re.MULTILINE))
    top = {p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    top |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    top |= {"demo/"} if (PACKAGE / "demo").is_dir() else set()
    assert named == top, f"docs/development.md module map: missing {sorted(top - named)}, stale {sorted(named - top)}"
    for package in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        modules = {m.stem for m in package.glob("*.py") if m.stem not in ("__init__", "__main__")}
        line = next(line for line in block.splitlines() if line.strip().startswith(package.name + "/"))
        missing = [m for m in modules if not re.search(rf"\b{m}\b", line)]
        assert not missing, f"docs/development.md module map: {package.name}/ does not name {missing}"
