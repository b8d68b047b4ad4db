"""The package's layout rules: imports go one way (down the layers below), no import cycles, no module over
500 lines and no function over 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_finetune"

# Each subpackage's layer: a module may import its own subpackage and any lower layer, never a higher one
# nor another subpackage of its own layer. ``errors`` and ``escaping`` sit below everything.
LAYERS = {
    "errors": 0,
    "escaping": 0,
    "config": 1,
    "data": 2,
    "labels": 2,
    "models": 3,
    "runtime": 3,
    "training": 4,
    "inference": 4,
    "hub": 5,
    "export": 5,
    "app": 5,
    "run": 6,
    "search": 7,
    "cli": 8,
    "demo": 9,
    "__init__": 10,
    "__main__": 10,
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The hf_finetune modules ``path`` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use hf_finetune.<package>.<module>"
            base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "hf_finetune" and t != "hf_finetune")
    return found


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[top], top


def test_every_subpackage_has_a_layer_and_a_docstring():
    for module, path in _modules().items():
        _layer(module)  # KeyError names a subpackage without a layer
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} says nothing of what lives there"


def test_imports_go_down_the_layers():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        level, top = _layer(module)
        for target in _imports(path, modules):
            target_level, target_top = _layer(target)
            if target_top != top and target_level >= level:
                wrong.append(f"{module} imports {target} (layer {level} -> {target_level})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {t for t in _imports(p, modules) if t in modules and t != m} for m, p in modules.items()}
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path):
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        pytest.fail(f"{path}: {lines} lines (at most {MAX_MODULE_LINES})")
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    if long:
        pytest.fail(f"{path}: " + ", ".join(long) + f" (at most {MAX_FUNCTION_LINES})")


def test_every_module_imports():
    """A broken import anywhere (a module no test reaches, such as the demo's) fails here."""
    import importlib

    for module in _modules():
        if not module.endswith("__main__"):
            importlib.import_module(module)
