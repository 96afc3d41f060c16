"""Test-only protos (tests/protos/), compiled with grpc_tools.protoc at test time and imported.

They may import the Google protos and Tally's own (`tally/options/v1/access.proto`), so a
test service can declare access policies and be served by the real interceptor chain.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from app.contracts import googleapis_root, well_known_root

TEST_PROTOS = Path(__file__).resolve().parent / "protos"
TALLY_PROTOS = Path(__file__).resolve().parents[1] / "protos"


@dataclass(frozen=True)
class Generated:
    pb2: ModuleType
    pb2_grpc: ModuleType


@contextmanager
def compiled(proto_file: str, out: Path) -> Iterator[Generated]:
    """`proto_file` (relative to tests/protos) compiled into `out` and imported; sys.path restored,
    and every `tally_test` module forgotten, on exit."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    argv = [
        "grpc_tools.protoc",
        f"-I{TEST_PROTOS}",
        f"-I{TALLY_PROTOS}",
        f"-I{googleapis_root()}",
        f"-I{well_known_root()}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        proto_file,
    ]
    assert protoc.main(argv) == 0, f"protoc failed: {argv}"
    sys.path.insert(0, str(out))
    try:
        module = proto_file.removesuffix(".proto").replace("/", ".") + "_pb2"
        yield Generated(importlib.import_module(module), importlib.import_module(module + "_grpc"))
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n == "tally_test" or n.startswith("tally_test.")]:
            del sys.modules[name]
