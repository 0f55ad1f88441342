"""The layers of nestvec.cluster import one way only: _ops -> _server -> _distributed ->
_storage -> _engine (docs/architecture.md). Read from the source with `ast`, so a
violating import fails here even if no test happens to execute it."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
LAYERS = ["_engine", "_storage", "_distributed", "_server", "_ops"]  # bottom to top
# Third-party packages a layer may never import (the engine is pure math; nothing
# below the server speaks gRPC; nothing below the Ray layer touches Ray).
FORBIDDEN = {
    "_engine": {"ray", "grpc", "nestvec.v1", "nestvec.client", "nestvec.cluster.loadtest"},
    "_storage": {"ray", "grpc", "nestvec.v1", "nestvec.client", "nestvec.cluster.loadtest"},
    "_distributed": {"grpc", "nestvec.v1", "nestvec.client", "nestvec.cluster.loadtest"},
    "_server": {"nestvec.client", "nestvec.cluster.loadtest"},
    "_ops": set(),
}


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative ones resolved), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(CLUSTER).with_suffix("")
    here = ["nestvec", "cluster", *rel.parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["nestvec", "cluster"] and len(parts) > 2 and parts[2] in LAYERS:
        return parts[2]
    return None


def _violations(layer: str) -> list[str]:
    rank = LAYERS.index(layer)
    bad = []
    for path in sorted((CLUSTER / layer).rglob("*.py")):
        for line, mod in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {mod}"
            other = _layer_of(mod)
            if other is not None and LAYERS.index(other) > rank:
                bad.append(f"{where} (upward: {layer} may not import {other})")
            if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{where} (forbidden in {layer})")
    return bad


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_downward(layer):
    assert (CLUSTER / layer / "__init__.py").exists()
    assert _violations(layer) == []


def test_every_cluster_module_is_in_a_layer():
    """No module left at the package root but its public face (`__init__.py`);
    loadtest/ is a tool beside the layers and imports only the SDK."""
    loose = [p.name for p in CLUSTER.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    for path in (CLUSTER / "loadtest").rglob("*.py"):
        for line, mod in _imports(path):
            assert _layer_of(mod) is None, f"{path.relative_to(ROOT)}:{line} imports {mod}"


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The test above could pass vacuously if _imports missed imports: a planted upward
    and a planted forbidden import must both be reported."""
    fake = tmp_path / "cluster"
    (fake / "_engine").mkdir(parents=True)
    (fake / "_engine" / "__init__.py").write_text("")
    (fake / "_engine" / "bad.py").write_text(
        "import ray\nfrom nestvec.cluster._server import gateway\nfrom .._storage import wal\n")
    monkeypatch.setattr(__import__(__name__), "CLUSTER", fake)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    bad = _violations("_engine")
    assert any("forbidden" in b and "ray" in b for b in bad)
    assert any("upward" in b and "_server" in b for b in bad)
    assert any("upward" in b and "nestvec.cluster._storage" in b for b in bad)  # relative import
