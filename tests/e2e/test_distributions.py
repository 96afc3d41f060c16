"""The repository's three Python distributions, built as wheels by pip: tally-protos alone ships the
generated stubs (the `tally` package); the server (`tally`) and the client (`tally-client`) depend
on it and share no file with it or with each other, so the three install side by side and
uninstalling one leaves the others whole.

pip builds each wheel in an isolated environment, so hatchling comes from the package index (and
from pip's cache on later runs); so do the wheels' dependencies in the install test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
# Distribution name -> its folder in the repository.
DISTRIBUTIONS = {
    "tally_protos": ROOT / "clients" / "python-protos",
    "tally_client": ROOT / "clients" / "python",
    "tally": ROOT,
}
STUBS = ("tally/account/v1/account_pb2.py", "tally/billing/v1/usage_pb2_grpc.py", "tally/descriptors.binpb")
STUB_IMPORTS = "import tally.billing.v1.usage_pb2, tally.account.v1.account_pb2_grpc"
PIP_TIMEOUT_SECONDS = 240


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: what a fresh environment imports must come from what pip installed there."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def pip(*args: str, cwd: Path) -> None:
    """The suite's own pip (a fresh venv is made without one and named with --python)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def run_python(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", code],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Distribution name -> its wheel, built from the working tree."""
    out = tmp_path_factory.mktemp("wheels")
    pip("wheel", "--no-deps", "--quiet", "-w", str(out), *map(str, DISTRIBUTIONS.values()), cwd=out)
    built = {path.name.split("-")[0]: path for path in out.glob("*.whl")}
    assert sorted(built) == sorted(DISTRIBUTIONS), f"wheels built: {sorted(p.name for p in out.iterdir())}"
    return built


def payload(wheel: Path) -> set[str]:
    """The wheel's files but its own .dist-info folder."""
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    return [
        Requirement(line.removeprefix("Requires-Dist:")).name
        for line in lines
        if line.startswith("Requires-Dist:")
    ]


def test_no_two_wheels_share_a_file(wheels: dict[str, Path]) -> None:
    files = {name: payload(wheel) for name, wheel in wheels.items()}
    names = sorted(files)
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            shared = files[first] & files[second]
            assert not shared, f"{first} and {second} both ship {sorted(shared)[:5]}"


def test_tally_protos_ships_the_stubs_and_nothing_else(wheels: dict[str, Path]) -> None:
    files = payload(wheels["tally_protos"])
    assert set(STUBS) <= files, f"missing from tally_protos: {sorted(set(STUBS) - files)}"
    assert not [name for name in files if not name.startswith("tally/")]
    # All of generated/tally, as `make generate` left it (hatchling leaves __pycache__ out).
    generated = ROOT / "generated"
    committed = {
        path.relative_to(generated).as_posix()
        for path in generated.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert files == committed


@pytest.mark.parametrize("name", ["tally", "tally_client"])
def test_the_server_and_the_client_depend_on_tally_protos_for_the_stubs(
    wheels: dict[str, Path], name: str
) -> None:
    assert not [file for file in payload(wheels[name]) if file.startswith("tally/")]
    assert "tally-protos" in requirements(wheels[name])


def test_uninstalling_the_client_leaves_the_stubs_of_the_server(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    target = ("--python", str(python))
    pip(*target, "install", "--quiet", str(wheels["tally_protos"]), str(wheels["tally_client"]), cwd=tmp_path)
    # The server without its dependencies: the files it shares, or not, are what this is about.
    pip(*target, "install", "--quiet", "--no-deps", str(wheels["tally"]), cwd=tmp_path)
    both = run_python(python, f"import tally_client; {STUB_IMPORTS}", tmp_path)
    assert both.returncode == 0, both.stderr

    pip(*target, "uninstall", "--yes", "--quiet", "tally-client", cwd=tmp_path)
    stubs = run_python(python, STUB_IMPORTS, tmp_path)
    assert stubs.returncode == 0, stubs.stderr
    client = run_python(python, "import tally_client", tmp_path)
    assert "No module named 'tally_client'" in client.stderr
