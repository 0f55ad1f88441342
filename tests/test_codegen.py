"""The committed protobuf/gRPC code is what protos/generate.py makes from the .proto."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
COMMITTED = REPO / "protos" / "nestvec" / "v1"
GENERATED = ["nestvec_pb2.py", "nestvec_pb2_grpc.py", "nestvec_pb2.pyi"]


def load_generate_module():
    """protos/generate.py is a script, not part of the package: import it by path."""
    spec = importlib.util.spec_from_file_location("nestvec_protos_generate", REPO / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("codegen")
    load_generate_module().generate(out)
    return out / "nestvec" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_committed_code_is_current(regenerated, name):
    fresh = regenerated / name
    assert fresh.is_file(), f"generate() did not write {name}"
    assert fresh.read_bytes() == (COMMITTED / name).read_bytes(), (
        f"protos/nestvec/v1/{name} is stale: run `python protos/generate.py` and commit the result")


def test_generate_writes_only_the_expected_files(regenerated):
    assert sorted(p.name for p in regenerated.iterdir() if p.is_file()) == sorted(GENERATED)


def test_installed_module_is_the_committed_file():
    from nestvec.v1 import nestvec_pb2, nestvec_pb2_grpc

    assert pathlib.Path(nestvec_pb2.__file__).resolve() == (COMMITTED / "nestvec_pb2.py").resolve()
    assert pathlib.Path(nestvec_pb2_grpc.__file__).resolve() == (COMMITTED / "nestvec_pb2_grpc.py").resolve()
    assert nestvec_pb2.DESCRIPTOR.services_by_name["VectorSearch"].full_name == "nestvec.v1.VectorSearch"
