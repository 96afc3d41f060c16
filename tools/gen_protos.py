"""Regenerate generated/ from protos/ (run it as `make generate`).

Stages the Google protos that ship in googleapis-common-protos under
build/proto-deps (buf.yaml's second module, so `buf lint` resolves imports
without a schema registry; `make install` runs `--stage` alone), then runs grpc_tools' protoc with the Python,
gRPC and mypy-protobuf generators. It also writes generated/tally/descriptors.binpb,
a FileDescriptorSet of every proto and its imports with source info (the
comments, which the _pb2 modules drop), for the OpenAPI document in gateway/.
`--check` generates into a scratch folder and fails if generated/ differs, which
is how CI catches stale code.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from app.contracts import googleapis_root, well_known_root

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"
DEPS = ROOT / "build" / "proto-deps"
GOOGLE_PACKAGES = ("api", "type", "rpc")
# Inside the `tally` package so it ships in the wheel and loads with importlib.resources.
DESCRIPTOR_SET = Path("tally") / "descriptors.binpb"


def stage_deps(deps: Path = DEPS) -> None:
    """Copy the .proto files of google/{api,type,rpc} into `deps` (build/proto-deps)."""
    source = googleapis_root() / "google"
    shutil.rmtree(deps, ignore_errors=True)
    for package in GOOGLE_PACKAGES:
        target = deps / "google" / package
        target.mkdir(parents=True)
        for proto in sorted((source / package).glob("*.proto")):
            shutil.copy2(proto, target / proto.name)


def plugin(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        sys.exit(f"gen_protos: {name} not found next to {sys.executable}; install the dev extras")
    return path


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTOS.rglob("*.proto"))
    wkt = well_known_root()
    if wkt is None:
        sys.exit("gen_protos: grpcio-tools is not installed; install the dev extras")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{DEPS}",
        f"-I{wkt}",
        f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        "--include_source_info",
        "--include_imports",
        *(str(p.relative_to(PROTOS)) for p in protos),
    ]
    (out / DESCRIPTOR_SET).parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", *args], cwd=PROTOS, check=False)
    if result.returncode != 0:
        sys.exit(f"gen_protos: protoc failed with exit code {result.returncode}")
    return protos


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diff = [f"only in {a.name}/: {p}" for p in sorted(files_a - files_b)]
    diff += [f"only in a fresh generation: {p}" for p in sorted(files_b - files_a)]
    diff += [
        f"differs: {p}" for p in sorted(files_a & files_b) if not filecmp.cmp(a / p, b / p, shallow=False)
    ]
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    parser.add_argument(
        "--stage",
        nargs="?",
        const=DEPS,
        type=Path,
        metavar="DIR",
        help="only stage the Google protos for buf, into DIR (default build/proto-deps)",
    )
    options = parser.parse_args()
    if options.stage:
        stage_deps(options.stage)
        print(f"staged the Google protos under {options.stage}/ for buf")
        return
    stage_deps()
    if options.check:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / "generated"
            generate(fresh)
            stale = differences(GENERATED, fresh)
        if stale:
            print("generated/ is stale; run `make generate` and commit the result:", *stale, sep="\n  ")
            sys.exit(1)
        print("generated/ is up to date")
        return
    shutil.rmtree(GENERATED, ignore_errors=True)
    protos = generate(GENERATED)
    print(f"generated {len(protos)} proto file(s) into {GENERATED.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
