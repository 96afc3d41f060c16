"""tools/contracts.py: protos/ is held to the committed baseline, and a break must be deliberate.

Each test runs the tool on a copy of buf.yaml and protos/ in a temporary workspace, changed the
way a developer would change it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "contracts.py"
AUTH = Path("protos/tally/account/v1/auth.proto")
BASELINE = Path("protos/baseline.txtpb")


def contracts(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_repository_keeps_its_baseline() -> None:
    result = contracts(ROOT, "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_removed_field_fails_and_needs_a_deliberate_baseline(workspace: Path) -> None:
    edit(workspace / AUTH, "  string account_id = 4;\n", "")
    before = (workspace / BASELINE).read_text()

    checked = contracts(workspace, "check")
    assert checked.returncode == 1
    assert 'field "4" with name "account_id" on message "User" was deleted' in checked.stdout
    assert "BREAK=1" in checked.stdout

    refused = contracts(workspace, "baseline")
    assert refused.returncode == 1
    assert (workspace / BASELINE).read_text() == before

    accepted = contracts(workspace, "baseline", "--allow-break")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert 'name: "account_id"' in before
    assert before.count('name: "account_id"') - 1 == (workspace / BASELINE).read_text().count(
        'name: "account_id"'
    )
    assert contracts(workspace, "check").returncode == 0


def test_a_compatible_change_needs_a_new_baseline_and_comments_do_not(workspace: Path) -> None:
    edit(workspace / AUTH, "// Response for Logout.", "// Response for Logout, reworded.")
    assert contracts(workspace, "check").returncode == 0

    edit(workspace / AUTH, "message LogoutResponse {}", "message LogoutResponse {\n  string note = 1;\n}")
    stale = contracts(workspace, "check")
    assert stale.returncode == 1
    assert "changed since" in stale.stdout
    written = contracts(workspace, "baseline")
    assert written.returncode == 0, written.stdout + written.stderr
    assert 'name: "note"' in (workspace / BASELINE).read_text()
    assert contracts(workspace, "check").returncode == 0
