"""The package's import graph, read statically: no cycles, and imports point down.

Every `import` / `from ... import` statement counts, at module level or inside a function, so a
cycle cannot hide behind a deferred import. An edge goes to the module named; importing a module
does not add an edge to its parent packages (Python runs their `__init__` first, but a package's
`__init__` importing its own submodules is not a cycle).
"""

import ast
from pathlib import Path

PACKAGE = "jaxrl_llm"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
LOW_LEVEL = ("kernels", "parallel", "quant")
HIGH_LEVEL = ("train", "rollout", "envs", "agents")


def module_name(path: Path, root: Path = ROOT) -> str:
    """`<root>/models/config.py` -> `jaxrl_llm.models.config`; a package is its `__init__`."""
    parts = (root.name,) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(source: str, importer: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The package modules that `source` (the code of module `importer`) imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, importer, is_package)
            # `from pkg import sub` imports the submodule; `from pkg import name` imports `pkg`.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` binds `a` but loads `a.b.c`; keep the longest name that is a module.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != importer:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports, for every `.py` file under `root`."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    return {name: imported_modules(path.read_text(), name, modules, path.name == "__init__.py")
            for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as `[a, b, ..., a]`, or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "active" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "active":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict[str, set[str]], importers, allowed) -> dict[str, list[str]]:
    """Modules of the subpackages `importers` -> the package modules they import outside `allowed`.

    `allowed(subpackage)` says whether a target subpackage may be imported.
    """
    found = {m: sorted(t for t in targets if not allowed(_subpackage(t)))
             for m, targets in graph.items() if _subpackage(m) in importers}
    return {m: t for m, t in found.items() if t}


def test_the_graph_sees_the_imports_of_a_known_module():
    graph = import_graph()
    assert "jaxrl_llm.models.config" in graph["jaxrl_llm.models.hf_config"]
    assert "jaxrl_llm.models.qwen3_next" in graph["jaxrl_llm.models.hf_config"]
    assert "jaxrl_llm.parallel.rules" in graph["jaxrl_llm.parallel.activations"]


def test_function_level_and_relative_imports_are_edges():
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.d"}
    source = (
        "import os\n"
        "from pkg import b\n"
        "def f():\n"
        "    from .c import thing\n"
        "    import pkg.sub.d\n"
        "from pkg.sub import name\n"
    )
    assert imported_modules(source, "pkg.a", modules) == {"pkg.b", "pkg.c", "pkg.sub.d", "pkg.sub"}
    assert imported_modules("from . import d", "pkg.sub", modules, is_package=True) == {"pkg.sub.d"}
    assert imported_modules("from .. import a", "pkg.sub.d", modules) == {"pkg.a"}


def test_find_cycle_reports_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_violations_names_the_offending_import():
    graph = {"jaxrl_llm.parallel.rules": {"jaxrl_llm.train.sft", "jaxrl_llm.models.config"},
             "jaxrl_llm.objectives.core": {"jaxrl_llm.objectives.groups"}}
    upward = violations(graph, ("parallel",), lambda sub: sub not in HIGH_LEVEL)
    assert upward == {"jaxrl_llm.parallel.rules": ["jaxrl_llm.train.sft"]}
    assert violations(graph, ("objectives",), lambda sub: sub == "objectives") == {}


def test_objectives_import_nothing_else_from_the_package():
    bad = violations(import_graph(), ("objectives",), lambda sub: sub == "objectives")
    assert not bad, f"jaxrl_llm.objectives must import only itself and JAX; got {bad}"


def test_low_level_packages_do_not_import_the_upper_layers():
    bad = violations(import_graph(), LOW_LEVEL, lambda sub: sub not in HIGH_LEVEL)
    assert not bad, f"jaxrl_llm.{{{', '.join(LOW_LEVEL)}}} must not import {HIGH_LEVEL}; got {bad}"
