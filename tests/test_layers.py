"""Imports point down only, and no module imports itself in a circle.

The layers, lowest first (../shared/DESIGN.md): io (with errors and config) < diffusion, nn, data
< metrics < models, autoencoders < samplers < pipelines, convert < training < cli, web. Every
``import`` in every module is read with :mod:`ast`, including those inside functions, so a lazy
import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import pkgutil
from pathlib import Path

import difflab

LAYERS: dict[str, int] = {
    "io": 0,
    "errors": 0,
    "config": 0,
    "diffusion": 1,
    "nn": 1,
    "data": 1,
    "metrics": 2,
    "models": 3,
    "autoencoders": 3,
    "samplers": 4,
    "pipelines": 5,
    "convert": 5,
    "training": 6,
    "cli": 7,
    "web": 7,
    "__main__": 7,
}
SOURCE = Path(difflab.__file__).parent


def modules() -> dict[str, Path]:
    """Every difflab module name -> its file."""
    found = {"difflab": SOURCE / "__init__.py"}
    for info in pkgutil.walk_packages([str(SOURCE)], prefix="difflab."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None
        found[info.name] = Path(spec.origin)
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The difflab modules ``name`` imports (``from difflab.x import y`` counts y if a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {target for target in targets if target in known and target != name}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def test_every_subpackage_has_a_layer():
    top = {name.split(".")[1] for name in modules() if name.count(".") >= 1}
    assert top - set(LAYERS) == set(), "give the new package a layer in LAYERS and DESIGN.md"


def test_every_module_imports():
    for name in modules():
        importlib.import_module(name)


def test_imports_point_down_only():
    upward = []
    for name, targets in import_graph().items():
        mine = layer_of(name)
        if mine is None:
            continue  # the package root re-exports nothing from the layers
        for target in targets:
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                upward.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ re-exports its modules: edges into a package from its own modules
    # ("difflab.metrics.x imports difflab.metrics") would be cycles only through the re-export
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                if not _through_own_package_init(cycle):
                    cycles.append(" -> ".join(cycle))
            elif state.get(target) is None:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])
    assert cycles == []


def _through_own_package_init(cycle: list[str]) -> bool:
    """True for ``pkg -> pkg.mod -> ... -> pkg``: a package's __init__ re-exporting its module."""
    return any(b.startswith(a + ".") or a.startswith(b + ".") for a, b in itertools.pairwise(cycle))


def test_the_reader_sees_lazy_relative_and_from_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from difflab.samplers import stack\n"
        "def later():\n"
        "    import difflab.cli.common\n"
        "    from ..training import loop\n"
    )
    known = {
        "difflab.samplers",
        "difflab.samplers.stack",
        "difflab.cli.common",
        "difflab.training.loop",
    }
    found = imported_modules("difflab.metrics.mod", source, known)
    assert found == known
    assert [layer_of(name) for name in sorted(found)] == [7, 4, 4, 6]
