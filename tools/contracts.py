"""The breaking-change check of our contracts against a committed baseline (`make check-contracts`).

protos/baseline.txtpb is a FileDescriptorSet of our own protos only (no Google files, no
comments), in text form so that a review shows what changed. `check` fails when protos/ breaks
it (`buf breaking`, with buf.yaml's rules) and when protos/ changed compatibly without a new
baseline, so that the baseline is always the contract as released. `baseline` rewrites it and
refuses a break unless --allow-break: a deliberate break updates the baseline in the same
commit, where a reviewer sees it.

Why a baseline and not `buf breaking --against '.git#branch=main'`: buf builds the against side
from the committed tree alone, and the Google protos our files import are not committed
(DESIGN.md). So the check rebuilds the against image here: the baseline's files plus the Google
files they import, taken from the installed packages.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, text_format

from app.contracts import googleapis_root, our_protos, well_known_root

ROOT = Path(__file__).resolve().parent.parent
BASELINE = Path("protos") / "baseline.txtpb"
DEPS = Path("build") / "proto-deps"
HEADER = (
    "# The breaking-change baseline of protos/: a FileDescriptorSet of our own files.\n"
    "# Written by `make contracts-baseline` (tools/contracts.py); do not edit by hand.\n"
)


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        sys.exit(f"contracts: {name} not found; install the dev extras")
    return found


def _includes() -> list[Path]:
    well_known = well_known_root()
    if well_known is None:
        sys.exit("contracts: grpcio-tools is not installed; install the dev extras")
    return [googleapis_root(), well_known]


def _register_extensions(files: descriptor_pb2.FileDescriptorSet) -> None:
    """Import the Python module of each file that declares extensions (google.api.http, our access
    policy), so that options parse as fields: text format would silently drop unknown ones."""
    for file in files.file:
        if file.extension:
            module = file.name.removesuffix(".proto").replace("/", ".").replace("-", "_") + "_pb2"
            try:
                importlib.import_module(module)
            except ImportError:
                sys.exit(
                    f"contracts: {file.name} declares options but {module} is missing; run `make generate`"
                )


def compile_set(files: list[str], includes: list[Path]) -> descriptor_pb2.FileDescriptorSet:
    """`files` and everything they import, compiled by grpc_tools' protoc without source info
    (comments are not contract)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.binpb"
        command = [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{path}" for path in includes)]
        command += [f"--descriptor_set_out={out}", "--include_imports", *files]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"contracts: protoc failed:\n{result.stderr}")
        data = out.read_bytes()
    _register_extensions(descriptor_pb2.FileDescriptorSet.FromString(data))
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def current(root: Path) -> descriptor_pb2.FileDescriptorSet:
    protos = root / "protos"
    ours = our_protos(protos)
    compiled = compile_set(sorted(ours), [protos, *_includes()])
    return descriptor_pb2.FileDescriptorSet(
        file=sorted((f for f in compiled.file if f.name in ours), key=lambda f: f.name)
    )


def read_baseline(root: Path) -> descriptor_pb2.FileDescriptorSet | None:
    """The committed baseline; after current(), which registers the extensions its options use."""
    path = root / BASELINE
    if not path.is_file():
        return None
    return text_format.Parse(path.read_text(), descriptor_pb2.FileDescriptorSet())


def against_image(baseline: descriptor_pb2.FileDescriptorSet) -> descriptor_pb2.FileDescriptorSet:
    """The baseline with the Google files it imports before it, as buf wants an image."""
    ours = {file.name for file in baseline.file}
    outside = sorted({dep for file in baseline.file for dep in file.dependency if dep not in ours})
    imported = compile_set(outside, _includes()) if outside else None
    image = descriptor_pb2.FileDescriptorSet()
    image.file.extend(imported.file if imported else [])
    image.file.extend(baseline.file)
    return image


def _stage_deps(root: Path) -> None:
    """buf resolves the input's imports from build/proto-deps (buf.yaml's second module)."""
    if (root / DEPS / "google" / "api" / "annotations.proto").is_file():
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gen_protos import stage_deps

    stage_deps(root / DEPS)


def breaks(root: Path, baseline: descriptor_pb2.FileDescriptorSet) -> str:
    """What `buf breaking` reports for protos/ against the baseline; empty when nothing breaks."""
    _stage_deps(root)
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "baseline.binpb"
        image.write_bytes(against_image(baseline).SerializeToString())
        result = subprocess.run(
            [_tool("buf"), "breaking", "protos", "--against", str(image)],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode == 0:
        return ""
    return (
        result.stdout + result.stderr
    ).strip() or f"buf breaking failed with exit code {result.returncode}"


def check(root: Path) -> int:
    fresh = current(root)
    baseline = read_baseline(root)
    if baseline is None:
        print(f"contracts: no {BASELINE}; run `make contracts-baseline` and commit it")
        return 1
    found = breaks(root, baseline)
    if found:
        print(f"contracts: protos/ breaks the released contract in {BASELINE}:\n{found}")
        print(
            "If the break is deliberate: `make contracts-baseline BREAK=1`, and commit the baseline with it."
        )
        return 1
    if fresh != baseline:
        print(f"contracts: protos/ changed since {BASELINE} (compatibly); run `make contracts-baseline`")
        print("and commit the baseline with the change, so that later checks hold it to this contract.")
        return 1
    print(f"contracts: protos/ keeps every promise of {BASELINE}")
    return 0


def write_baseline(root: Path, *, allow_break: bool) -> int:
    fresh = current(root)
    baseline = read_baseline(root)
    found = breaks(root, baseline) if baseline is not None else ""
    if found and not allow_break:
        print(f"contracts: protos/ breaks the released contract in {BASELINE}:\n{found}")
        print("Not rewritten. If the break is deliberate: `make contracts-baseline BREAK=1`.")
        return 1
    if found:
        print(f"contracts: accepting this break of {BASELINE}:\n{found}")
    (root / BASELINE).write_text(HEADER + text_format.MessageToString(fresh))
    print(f"contracts: wrote {BASELINE}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="a workspace with buf.yaml and protos/")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="fail on a break of the baseline, or on a stale baseline")
    rewrite = commands.add_parser("baseline", help="rewrite protos/baseline.txtpb from protos/")
    rewrite.add_argument("--allow-break", action="store_true", help="accept a deliberate break")
    options = parser.parse_args()
    root = options.root.resolve()
    if options.command == "check":
        sys.exit(check(root))
    sys.exit(write_baseline(root, allow_break=options.allow_break))


if __name__ == "__main__":
    main()
