"""Regenerate the protobuf/gRPC Python code from protos/nestvec/v1/*.proto.

    python protos/generate.py            # writes into protos/ (committed)

The generated modules live beside their .proto files under protos/nestvec/v1
and install as `nestvec.v1`. tests/test_codegen.py fails if they are stale.
"""
from __future__ import annotations

import pathlib
import sys

PROTO_ROOT = pathlib.Path(__file__).resolve().parent


def proto_files() -> list[pathlib.Path]:
    return sorted((PROTO_ROOT / "nestvec" / "v1").glob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # grpcio-tools: a dev/test dependency only

    import grpc_tools

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
