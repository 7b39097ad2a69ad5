"""Generate docs/reference/configuration.md from conf/ itself: every group, option and key, with its default and
the comment written beside it in the YAML.

`python scripts/config_reference.py` rewrites the page; `--check` exits 1 when the committed page is stale or a key
has no comment (tests/test_docs.py runs both checks). A key's comment is the `# ...` on its line (with the
`#` lines that continue it below, indented further), or the `#` lines directly above it at its own indentation. A
key whose value is a block of keys documents itself through them; `_target_` and `defaults` need no comment.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGE = ROOT / "docs" / "reference" / "configuration.md"
SELF_EXPLAINED = {"_target_", "defaults"}


@dataclass
class Key:
    path: str  # dotted, as overridden on the command line
    value: str  # the YAML text of its default
    comment: str
    line: int


@dataclass
class Option:
    file: Path
    header: str  # the comment block at the top: what the option is for
    package: str
    defaults: list[tuple[str, str]] = field(default_factory=list)  # (entry, comment)
    keys: list[Key] = field(default_factory=list)


def _inline_comment(line: str) -> tuple[int, str] | None:
    """(column, text) of a `# comment` on a line, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i, line[i + 1 :].strip()
    return None


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _comment_for(lines: list[str], row: int, indent: int, header_end: int) -> str:
    """The comment of the key on lines[row]: inline (+ continuation lines) or the block just above it."""
    parts = []
    inline = _inline_comment(lines[row])
    if inline and lines[row][: inline[0]].strip():
        column, text = inline
        parts.append(text)
        for line in lines[row + 1 :]:
            if not _is_comment(line) or line.index("#") < max(column - 2, indent + 1):
                break
            parts.append(line.strip()[1:].strip())
        return " ".join(p for p in parts if p)
    above = row - 1
    while above >= header_end and _is_comment(lines[above]) and lines[above].index("#") == indent:
        parts.insert(0, lines[above].strip()[1:].strip())
        above -= 1
    return " ".join(p for p in parts if p and not p.startswith("----"))


def _header(lines: list[str]) -> tuple[str, str, int]:
    """(description, package, first line after the header) of an option file."""
    package, text, row = "", [], 0
    while row < len(lines) and (_is_comment(lines[row]) or not lines[row].strip()):
        stripped = lines[row].strip()
        if stripped.startswith("# @package"):
            package = stripped.split(None, 2)[2]
        elif stripped:
            text.append(stripped[1:].strip())
        elif text:  # a blank line ends the header
            row += 1
            break
        row += 1
    return " ".join(t for t in text if t), package, row


def _value_text(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return node.value if node.value != "" or node.style else "null"
    return yaml.safe_dump(yaml.safe_load(yaml.serialize(node)), default_flow_style=True, width=10_000).strip()


def parse_option(path: Path, group: str) -> Option:
    text = path.read_text()
    lines = text.splitlines()
    header, package, header_end = _header(lines)
    package = {"": group.replace("/", "."), "_global_": ""}.get(package, package)
    option = Option(path, header, package)
    root = yaml.compose(text)
    if root is None:
        return option

    def walk(node: yaml.MappingNode, prefix: str) -> None:
        for key_node, value_node in node.value:
            name = key_node.value
            row, indent = key_node.start_mark.line, key_node.start_mark.column
            dotted = f"{prefix}.{name}" if prefix else name
            if name == "defaults" and not prefix:
                for item in value_node.value:
                    if isinstance(item, yaml.MappingNode):
                        entry = ", ".join(f"{k.value}: {_value_text(v)}" for k, v in item.value)
                    else:
                        entry = item.value
                    option.defaults.append(
                        (entry, _comment_for(lines, item.start_mark.line, item.start_mark.column, 0))
                    )
                continue
            comment = _comment_for(lines, row, indent, header_end)
            if isinstance(value_node, yaml.MappingNode) and value_node.value and not value_node.flow_style:
                option.keys.append(Key(dotted, "", comment, row + 1))
                walk(value_node, dotted)
            else:
                option.keys.append(Key(dotted, _value_text(value_node), comment, row + 1))

    if isinstance(root, yaml.MappingNode):
        walk(root, package)
    return option


def groups(conf: Path = CONF) -> dict[str, list[Path]]:
    """Each config group (a folder of conf/, nested ones as `eval/reward`) and its option files."""
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        found.setdefault("/".join(rel.parts[:-1]), []).append(path)
    return found


def undocumented(conf: Path = CONF) -> list[str]:
    """`file:line key` for every key (a leaf, or an option file's header) without a comment."""
    missing = []
    for group, paths in groups(conf).items():
        for path in paths:
            option = parse_option(path, group)
            rel = path.relative_to(conf.parent)
            if group and not option.header:
                missing.append(f"{rel}:1 (the option's header comment)")
            for key in option.keys:
                if key.value and not key.comment and key.path.rsplit(".", 1)[-1] not in SELF_EXPLAINED:
                    missing.append(f"{rel}:{key.line} {key.path}")
    return missing


def _cell(text: str) -> str:
    """YAML comment text as Markdown: literal outside `code` spans (no links, emphasis or HTML from `[`, `*`, `<`)."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([\\\[\]*_])", r"\\\1", parts[i]).replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts).replace("|", "\\|")


def _code_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    text = _code_cell(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _option_section(option: Option, title: str) -> list[str]:
    out = [title, "", _cell(option.header) or "(no description)", ""]
    if option.defaults:
        out += ["| defaults entry | comment |", "| --- | --- |"]
        out += [f"| {_code(entry)} | {_cell(comment)} |" for entry, comment in option.defaults]
        out.append("")
    if option.keys:
        out += ["| key | default | comment |", "| --- | --- | --- |"]
        out += [f"| {_code(k.path)} | {_code(k.value) if k.value else ''} | {_cell(k.comment)} |" for k in option.keys]
        out.append("")
    return out


def render(conf: Path = CONF) -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- generated by scripts/config_reference.py from conf/: do not edit; run `make docs-config` -->",
        "",
        "Every config group of `conf/`, every option and every key, with its default and the comment beside it in the",
        "YAML (generated; `tests/test_docs.py` fails when this page is stale or a key has no comment). Override any key",
        "on the command line (`python -m dpo_exp lr=5e-4 eval.num_prompts=200`), pick an option with `group=option`",
        "(`model=tiny_gpt2`). A model or experiment option whose keys start at the top level is a global-package",
        "config: it sets values of other groups too. See [Configuration](../configuration.md) for precedence.",
        "",
    ]
    found = groups(conf)
    for path in found.pop(""):
        out += _option_section(parse_option(path, ""), f"## `{path.name}` (top level)")
    for group, paths in found.items():
        names = ", ".join(f"`{p.stem}`" for p in paths)
        out += [f"## Group `{group}`", "", f"Options (`{group}=NAME`, files `conf/{group}/NAME.yaml`): {names}.", ""]
        for path in paths:
            out += _option_section(parse_option(path, group), f"### `{group}={path.stem}`")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    page = render()
    if "--check" in argv:
        problems = [f"no comment: {m}" for m in undocumented()]
        if not PAGE.exists() or PAGE.read_text() != page:
            problems.append(f"{PAGE.relative_to(ROOT)} is stale: run python scripts/config_reference.py")
        print("\n".join(problems) or "configuration reference up to date", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
