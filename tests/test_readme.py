"""The README's Python examples run, and its source tree lists the modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_examples_run(index, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index}", "exec"), {})


def tree_listing() -> dict[str, set[str]]:
    """``{package: {module file names}}`` from the README's ``src/difflab/`` block."""
    block = re.search(r"```\nsrc/difflab/\n(.*?)```", README, flags=re.S)
    assert block, "the README has no src/difflab/ tree"
    listed: dict[str, set[str]] = {}
    package = ""
    for line in block.group(1).splitlines():
        head = re.match(r"\s{2}(\w+)/", line)
        if head:
            package = head.group(1)
        listed.setdefault(package, set()).update(re.findall(r"(\w+\.py)", line))
    return listed


def test_the_source_tree_lists_every_module_and_only_those():
    listed = tree_listing()
    source = ROOT / "src" / "difflab"
    for package in sorted(p for p in source.iterdir() if (p / "__init__.py").exists()):
        modules = {f.name for f in package.glob("*.py") if f.name != "__init__.py"}
        if package.name == "cli":
            continue  # "one module per command group"
        assert listed.get(package.name) == modules, package.name
