"""The import rules of design.md: arrows point down (orchestrator -> tune -> models; orchestrator -> kernels).

Every ``import`` in a layer's modules, at any depth (function-level imports included), is read with ``ast``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each layer must never import (top-level package names).
FORBIDDEN = {
    "kernels": {"orchestrator", "tune", "models", "ray", "torch", "mlflow"},
    "models": {"orchestrator", "tune", "ray", "mlflow"},
    "tune": {"orchestrator"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    bad = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        hit = _imports(path) & FORBIDDEN[layer]
        if hit:
            bad[str(path.relative_to(ROOT))] = sorted(hit)
    assert not bad, f"imports across the layers: {bad}"


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from orchestrator.track.runs import Tracker\n    import ray.tune\n")
    assert _imports(f) == {"orchestrator", "ray"}


# --- inside orchestrator/: cli -> jobs -> stages -> config/runtime, and no circles anywhere --------------

PACKAGES = ("kernels", "models", "tune", "orchestrator")

#: Rank of each orchestrator package: a module may import orchestrator modules of a lower rank, or of its own
#: package. The stages are nouns of the data flow; jobs (and the benchmarks) compose them; the CLI calls jobs.
RANKS = {
    "cli": 4,
    "jobs": 3, "bench": 3,
    "generate": 2, "build": 2, "evaluate": 2, "track": 2, "report": 2,
    "config": 1, "runtime": 1,
}


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _project_imports(name: str, path: Path, modules: dict) -> set[str]:
    """The project modules that module ``name`` imports, at any depth (package parents excluded)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in names:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _project_imports(name, path, modules) for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_anywhere():
    assert _circles(_graph()) == []


def test_the_circle_finder_finds_a_circle_behind_a_function_level_import():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "orchestrator" and len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) \
        else None


def test_every_orchestrator_package_has_a_rank():
    packages = {p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(RANKS)


def test_orchestrator_arrows_point_down_cli_jobs_stages_config():
    bad = []
    for module, targets in _graph().items():
        src = _package(module)
        if src is None:
            continue
        for target in targets:
            dst = _package(target)
            if dst is not None and dst != src and RANKS[dst] >= RANKS[src]:
                bad.append(f"{module} -> {target}")
    assert not bad, f"imports that point up or sideways: {bad}"


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for name, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
