"""The public surface is narrow and explicit: every name in `__all__` resolves, and
nothing internal is reachable through the public packages' `__all__`."""
import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["nestvec", "nestvec.client", "nestvec.cluster"])
def test_all_names_resolve(module):
    mod = importlib.import_module(module)
    assert mod.__all__, f"{module} must declare __all__"
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
        assert not name.startswith("_") or name == "__version__"


def test_public_entry_points_are_the_real_objects():
    import nestvec
    from nestvec.client import Client
    from nestvec.cluster import Coordinator, connect
    from nestvec.cluster._distributed import coordinator
    assert nestvec.Client is Client and nestvec.connect is connect
    assert Coordinator is coordinator.Coordinator


def test_engine_imports_without_ray_or_grpc():
    """The pure-numpy layer (and the error family) load without Ray or gRPC."""
    code = ("import sys, nestvec.cluster._engine.shard_engine, nestvec.errors; "
            "print(sorted(m for m in ('ray', 'grpc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
