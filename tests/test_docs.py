"""The documentation cannot drift from the code: the site builds strictly (a broken link, anchor or page fails),
the configuration reference is generated from conf/ (every key commented, the committed page current), the
troubleshooting page covers every `error:` message in the code, and the README is short with working links."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


config_reference = _script("config_reference")
error_messages = _script("error_messages")


def test_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
    assert "dpo_exp.training.model_card" in (tmp_path / "site" / "api" / "index.html").read_text()  # mkdocstrings


def test_every_config_key_has_a_comment_and_the_reference_page_is_current():
    assert config_reference.undocumented() == []
    assert config_reference.PAGE.read_text() == config_reference.render(), (
        "docs/reference/configuration.md is stale: run python scripts/config_reference.py"
    )


def test_the_reference_names_every_group_option_and_key_with_its_default_and_comment(tmp_path):
    conf = tmp_path / "conf"
    (conf / "widget").mkdir(parents=True)
    (conf / "config.yaml").write_text("defaults:\n  - widget: small\nsize: 3   # how big\n")
    (conf / "widget" / "small.yaml").write_text(
        "# A small widget.\ncolour: red        # paint\nparts:\n  # how many bolts\n  bolts: 4\n  nuts: 2\n"
    )
    page = config_reference.render(conf)
    assert "## Group `widget`" in page and "### `widget=small`" in page and "A small widget." in page
    assert "| `size` | `3` | how big |" in page and "| `widget.colour` | `red` | paint |" in page
    assert "| `widget.parts.bolts` | `4` | how many bolts |" in page  # a comment on the lines above the key
    assert config_reference.undocumented(conf) == ["conf/widget/small.yaml:6 widget.parts.nuts"]


def test_troubleshooting_covers_every_error_message_in_the_code():
    messages = error_messages.collect()
    assert len(messages) > 100 and any(m.template == "… must be > 0, got …" for m in messages)
    keys = error_messages.documented_keys((ROOT / "docs" / "troubleshooting.md").read_text())
    short = [k for k in keys if error_messages.literal_length(k) < error_messages.MIN_LITERAL]
    assert not short, f"documented keys naming too little fixed text: {short}"
    missing = sorted(
        {f"{m.where}: {m.template}" for m in messages if not any(error_messages.covers(k, m.template) for k in keys)}
    )
    assert not missing, "add these to docs/troubleshooting.md (message | cause | fix):\n" + "\n".join(missing)
    stale = [k for k in keys if not any(error_messages.covers(k, m.template) for m in messages)]
    assert not stale, f"docs/troubleshooting.md documents messages the code no longer has: {stale}"


def test_the_collector_finds_raised_printed_and_indirect_messages(tmp_path):
    package = tmp_path / "dpo_exp"
    package.mkdir()
    (tmp_path / "hydra_plugins").mkdir()
    (package / "m.py").write_text(
        "class Busy(UserError):\n    pass\n"
        "def problem(x):\n    return f'{x} is broken: fix it' if x else None\n"
        "def f(beta, x):\n"
        "    if beta < 0:\n        raise UserError(f'beta must be > 0, got {beta}')\n"
        "    message = problem(x)\n    if message:\n        raise UserError(message)\n"
        "    raise Busy('folder %s is busy' % x)\n"
        "def g(key):\n    print(f'error: {key} cannot be used', file=sys.stderr)\n"
    )
    (tmp_path / "Makefile").write_text('app:\n\tif [ -z "$$run" ]; then echo "error: no run yet" >&2; fi\n')
    found = {m.template for m in error_messages.collect(tmp_path)}
    assert found == {
        "beta must be > 0, got …",
        "… is broken: fix it",
        "folder … is busy",
        "… cannot be used",
        "no run yet",
    }
    assert error_messages.covers("beta must be > 0", "beta must be > 0, got …")
    assert error_messages.covers("… is broken", "… is broken: fix it")
    assert not error_messages.covers("beta must be > 0", "lr must be > 0, got …")


def _headings(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slugify(h.strip(), "-") for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def test_readme_is_short_and_every_link_resolves():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    links = re.findall(r"\]\(([^)\s]+)\)", readme.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://|mailto:", link)]
    assert len(local) > 10
    for link in local:
        target, _, anchor = link.partition("#")
        path = (ROOT / target) if target else readme
        assert path.exists(), f"README links to a missing {link}"
        if anchor:
            assert anchor in _headings(path), f"README links to a missing anchor {link}"


def test_every_code_fence_is_closed():
    """An unclosed ``` swallows the rest of a page into one code block (mkdocs does not warn)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    odd = [str(p.relative_to(ROOT)) for p in pages if len(re.findall(r"^\s*```", p.read_text(), re.MULTILINE)) % 2]
    assert not odd, f"unclosed code fence in {odd}"
