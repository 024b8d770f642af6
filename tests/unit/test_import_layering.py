"""The import arrows of the routerforge package run one way: the layer table of README.md, "Architecture:
layers", written here as `LAYERS`.

Read from the source with `ast`, so every import counts: module-level ones AND the ones inside functions
(a function-local import is fine for start-up cost, e.g. torch in a CLI path, but it must still point down),
and so do the "routerforge.module:function" names that are imported on first use (the family registry's
loaders, the `routerforge` command's subcommands). Within a layer any module may import any other, but the
module graph has no cycle at all. On top of the layers: `models` import no training code, and inference
(router, family registry, checkpoint loading, serve) imports no training code, not even indirectly.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "routerforge"

# (layer, module prefixes); the longest matching prefix decides a module's layer.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (5, ("routerforge.cli", "routerforge.demo", "routerforge.train.__main__", "routerforge.eval.cli",
         "routerforge.label.cli", "routerforge.serve.cli", "routerforge.registry.cli", "routerforge.router_cli")),
    (4, ("routerforge.registry.register", "routerforge.serve", "routerforge.rl", "routerforge.label")),
    (3, ("routerforge.router",)),
    (2, ("routerforge.train", "routerforge.eval")),
    (1, ("routerforge.data", "routerforge.models", "routerforge.registry")),
    (0, ("routerforge", "routerforge.errors", "routerforge.config", "routerforge.config_reference",
         "routerforge.recipes", "routerforge.io", "routerforge.encoders", "routerforge.data.config",
         "routerforge.data.records")),
]

_BY_NAME = re.compile(r"^routerforge(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")
TRAINING_CODE = ("routerforge.train",)
# Modules that must not reach training code through any chain of imports.
NO_TRAINING_CODE = ("routerforge.models", "routerforge.router", "routerforge.registry.families",
                    "routerforge.registry.load", "routerforge.serve")

# (importer, imported): arrows that break the table on purpose, each with its reason. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {
    ("routerforge", "routerforge.router"):
        "`from routerforge import Router`: the package root resolves Router lazily (PEP 562 __getattr__) so "
        "`import routerforge` stays free of torch; the root is imported before any submodule, so no cycle",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = max((prefix for _, prefixes in LAYERS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(layer for layer, prefixes in LAYERS if best in prefixes)


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def imports_of(module: str, path: Path, known: set[str] | frozenset[str]) -> list[tuple[str, int, bool]]:
    """(imported routerforge module, line, inside a function) for every import statement of the file."""
    tree = _parse(path)
    local = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from routerforge.eval import plots` imports the submodule routerforge.eval.plots
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _BY_NAME.match(node.value):
            targets = [node.value.partition(":")[0]]  # imported on first use, by name
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "routerforge" or target.startswith("routerforge."):
                while target not in known:  # `import routerforge.x.y` of a name defined in x: its module
                    target = target.rpartition(".")[0]
                found.append((target, node.lineno, id(node) in local or isinstance(node, ast.Constant)))
    return found


@functools.cache
def _import_graph() -> dict[str, frozenset[str]]:
    """module -> modules it imports (any statement), including the packages Python runs on the way
    (importing routerforge.models.mf runs routerforge/models/__init__.py), except its own packages and the
    ALLOWED arrows."""
    modules = all_modules()
    known = set(modules)
    graph: dict[str, frozenset[str]] = {}
    for module, path in modules.items():
        edges = set()
        for target, _, _ in imports_of(module, path, known):
            if (module, target) in ALLOWED:
                continue
            edges.add(target)
            parent = target.rpartition(".")[0]
            while parent and parent != "routerforge" and not (module == parent or module.startswith(parent + ".")):
                edges.add(parent)
                parent = parent.rpartition(".")[0]
        graph[module] = frozenset(edges - {module})
    return graph


def import_graph() -> dict[str, set[str]]:
    return {module: set(edges) for module, edges in _import_graph().items()}


def test_every_module_has_a_layer_and_every_arrow_points_down():
    modules = all_modules()
    known = set(modules)
    upward = []
    for module, path in modules.items():
        for target, line, inside_function in imports_of(module, path, known):
            if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED:
                where = "inside a function or by name" if inside_function else "at module level"
                upward.append(f"{path.relative_to(ROOT)}:{line} ({where}): {module} (layer {layer_of(module)}) "
                              f"imports {target} (layer {layer_of(target)})")
    assert not upward, "imports that point up the layer table:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: every component of two or more modules is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def training_code_reached(graph: dict[str, set[str]]) -> list[str]:
    """For each module of NO_TRAINING_CODE that reaches training code: one import chain that does."""
    offenders = []
    for start in sorted(m for m in graph if m.startswith(NO_TRAINING_CODE)):
        parent: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            node = todo.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt not in parent:
                    parent[nxt] = node
                    todo.append(nxt)
        reached = sorted(m for m in parent if m.startswith(TRAINING_CODE))
        if reached:
            chain, node = [], reached[0]
            while node is not None:
                chain.append(node)
                node = parent[node]
            offenders.append(" -> ".join(reversed(chain)))
    return offenders


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (module sets that import each other):\n" + "\n".join(map(str, cycles))


def test_models_and_inference_reach_no_training_code():
    offenders = training_code_reached(import_graph())
    assert not offenders, "training code reached from models / inference:\n" + "\n".join(offenders)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The checks can fail: a planted cycle, a planted chain into training code and upward layers are found."""
    planted_module = tmp_path / "toy.py"
    planted_module.write_text("import routerforge.data.records\n\n\ndef f():\n    from routerforge.train.tracking "
                              "import start_tracking\n    return 'routerforge.router:Router'\n")
    known = set(all_modules())
    assert imports_of("routerforge.models.toy", planted_module, known) == [
        ("routerforge.data.records", 1, False), ("routerforge.train.tracking", 5, True),
        ("routerforge.router", 6, True)]
    assert layer_of("routerforge.models.mf") == 1 and layer_of("routerforge.train.checkpointing") == 2
    assert layer_of("routerforge.data.config") == 0 and layer_of("routerforge.data.pipeline") == 1
    assert layer_of("routerforge.registry.register") == 4 and layer_of("routerforge.registry.load") == 1
    assert layer_of("routerforge.eval.cli") == 5 and layer_of("routerforge.eval.report") == 2
    planted = {"routerforge.router": {"routerforge.eval.report"}, "routerforge.eval.report": {"routerforge.router"},
               "routerforge.models.mf": {"routerforge.data.pipeline"},
               "routerforge.data.pipeline": {"routerforge.train.tracking"}}
    assert find_cycles(planted) == [["routerforge.eval.report", "routerforge.router"]]
    assert training_code_reached(planted) == [
        "routerforge.models.mf -> routerforge.data.pipeline -> routerforge.train.tracking"]
    # every real module is in the table, and the real graph is the one the tests above read
    graph = import_graph()
    assert set(graph) == set(all_modules()) and "routerforge.router" in graph["routerforge.router_cli"]
    assert "routerforge.models.knn" in graph["routerforge.registry.families"]  # a loader named as a string
