"""The contracts as files: our protos and exactly the Google protos they import.

A client in another language needs both, and the Google ones are not in the repository
(DESIGN.md: no third-party .proto is copied in): the installed googleapis-common-protos
package ships google/{api,type,rpc}, and grpcio-tools ships the well-known types
(google/protobuf). `tally protos export DIR` writes one folder that is a complete import
root; tools/gen_protos.py and tools/contracts.py find the Google protos through the same
functions.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PROTOS = Path(__file__).resolve().parent.parent / "protos"
INDEX = "README.md"
_INDEX_TITLE = "# Tally contracts, exported by `tally protos export`"
# `import "x.proto";`, `import public ...` and `import weak ...`, at the start of a line.
_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


class ContractError(Exception):
    """The contracts cannot be assembled (a source is missing); the message says what to install."""


def googleapis_root() -> Path:
    """The folder holding google/api, google/type and google/rpc .proto files."""
    from google.api import annotations_pb2

    return Path(annotations_pb2.__file__).resolve().parents[2]


def well_known_root() -> Path | None:
    """The folder holding google/protobuf/*.proto (grpcio-tools, a dev extra), or None."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent / "_proto"


def imports_of(path: Path) -> list[str]:
    return _IMPORT.findall(path.read_text())


def our_protos(protos: Path = PROTOS) -> dict[str, Path]:
    """Our .proto files by import name (their path under protos/)."""
    if not protos.is_dir():
        raise ContractError(f"no protos/ folder at {protos}: run this from a source checkout of Tally")
    return {str(p.relative_to(protos)): p for p in sorted(protos.rglob("*.proto"))}


@dataclass(frozen=True)
class ContractFiles:
    ours: dict[str, Path]
    imported: dict[str, Path]  # the Google protos our files import, directly or not
    origins: dict[str, str]  # import name -> the package it came from, for the index


def _package_version(name: str) -> str:
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def resolve(protos: Path = PROTOS) -> ContractFiles:
    """Our files and the closure of what they import from outside protos/."""
    ours = our_protos(protos)
    roots = [(googleapis_root(), _package_version("googleapis-common-protos"))]
    well_known = well_known_root()
    if well_known is not None:
        roots.append((well_known, f"well-known type, {_package_version('grpcio-tools')}"))
    imported: dict[str, Path] = {}
    origins: dict[str, str] = {}
    pending = [(name, importer) for importer, path in ours.items() for name in imports_of(path)]
    while pending:
        name, importer = pending.pop()
        if name in ours or name in imported:
            continue
        found = next(((root / name, origin) for root, origin in roots if (root / name).is_file()), None)
        if found is None:
            hint = " (install grpcio-tools, which ships them)" if name.startswith("google/protobuf/") else ""
            raise ContractError(f"{importer} imports {name}, which no installed package provides{hint}")
        imported[name], origins[name] = found
        pending.extend((dependency, name) for dependency in imports_of(found[0]))
    return ContractFiles(ours, dict(sorted(imported.items())), origins)


def _index(files: ContractFiles) -> str:
    lines = [
        _INDEX_TITLE,
        "",
        "This folder is a complete import root: `protoc -I .`, or @grpc/proto-loader with",
        "`includeDirs: [<this folder>]`. Nothing else is needed to build a client.",
        "",
    ]
    lines += [f"- `{name}`: Tally" for name in files.ours]
    lines += [f"- `{name}`: {files.origins[name]}" for name in files.imported]
    return "\n".join(lines) + "\n"


def export(target: Path, protos: Path = PROTOS) -> ContractFiles:
    """Write our protos, the Google protos they import and an index to `target`.

    `target` must be empty, missing, or an earlier export (which is replaced), so that no stale
    file of another export survives in it.
    """
    files = resolve(protos)
    if target.exists():
        if not target.is_dir():
            raise ContractError(f"{target} exists and is not a folder")
        index = target / INDEX
        previous = index.is_file() and index.read_text().startswith(_INDEX_TITLE)
        if any(target.iterdir()) and not previous:
            raise ContractError(f"{target} is not empty; name a new or empty folder")
        shutil.rmtree(target)
    for name, source in {**files.ours, **files.imported}.items():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    (target / INDEX).write_text(_index(files))
    return files
