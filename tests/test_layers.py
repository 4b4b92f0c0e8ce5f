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
    f.write_text("def f():\n    from orchestrator.tracking import Tracker\n    import ray.tune\n")
    assert _imports(f) == {"orchestrator", "ray"}
