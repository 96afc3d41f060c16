"""End to end: a Node.js @grpc/grpc-js client built from `tally protos export` alone calls a real server.

The npm packages are installed once into build/node-client (git-ignored) and reused by later runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import admin_token, run_tally, running_server, server_env
from tests.support import unavailable

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "build" / "node-client"
CLIENT_SCRIPT = Path(__file__).resolve().parent / "node" / "account_client.js"
PACKAGES = {"@grpc/grpc-js": "^1.14.0", "@grpc/proto-loader": "^0.8.0"}
NPM_TIMEOUT_SECONDS = 300


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """build/node-client/node_modules with grpc-js and proto-loader, installed by npm when missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("the Node.js client test needs node and npm (apt-get install nodejs npm)")
    manifest = json.dumps({"private": True, "dependencies": PACKAGES}, indent=2) + "\n"
    modules = NODE_CLIENT / "node_modules"
    package_json = NODE_CLIENT / "package.json"
    installed = all((modules / name / "package.json").is_file() for name in PACKAGES)
    if installed and package_json.is_file() and package_json.read_text() == manifest:
        return modules
    NODE_CLIENT.mkdir(parents=True, exist_ok=True)
    package_json.write_text(manifest)
    try:
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        unavailable(
            f"npm install did not finish within {NPM_TIMEOUT_SECONDS} s (is the npm registry reachable?)"
        )
    if result.returncode != 0:
        unavailable(f"npm install of {', '.join(PACKAGES)} failed:\n{result.stderr.strip()}")
    return modules


def run_client(modules: Path, contracts: Path, addr: str, email: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NODE_PATH": str(modules),
        "CONTRACTS": str(contracts),
        "TALLY_ADDR": addr,
        "TALLY_TOKEN": admin_token(),
        "ACCOUNT_EMAIL": email,
    }
    return subprocess.run(
        ["node", str(CLIENT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def export(tmp_path: Path) -> Path:
    contracts = tmp_path / "contracts"
    result = run_tally("protos", server_env(tmp_path), tmp_path, args=("export", str(contracts)))
    assert result.returncode == 0, result.stderr
    return contracts


def test_export_holds_our_protos_and_exactly_their_google_imports(tmp_path: Path) -> None:
    contracts = export(tmp_path)
    written = {str(p.relative_to(contracts)) for p in contracts.rglob("*") if p.is_file()}
    ours = {str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto")}
    google = {name for name in written if name.startswith("google/")}
    assert written == ours | google | {"README.md"}
    # What our protos import, and what those import in turn; nothing more.
    assert google == {
        "google/api/annotations.proto",
        "google/api/field_behavior.proto",
        "google/api/http.proto",
        "google/api/httpbody.proto",
        "google/protobuf/descriptor.proto",
        "google/protobuf/any.proto",
        "google/protobuf/field_mask.proto",
        "google/protobuf/struct.proto",
        "google/protobuf/timestamp.proto",
        "google/rpc/status.proto",
        "google/type/decimal.proto",
        "google/type/postal_address.proto",
    }
    index = (contracts / "README.md").read_text()
    assert all(f"`{name}`" in index for name in written - {"README.md"})

    again = run_tally("protos", server_env(tmp_path), tmp_path, args=("export", str(contracts)))
    assert again.returncode == 0, again.stderr
    other = tmp_path / "not-an-export"
    (other / "keep.txt").parent.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = run_tally("protos", server_env(tmp_path), tmp_path, args=("export", str(other)))
    assert refused.returncode == 2
    assert "not empty" in refused.stderr
    assert (other / "keep.txt").read_text() == "mine"


def test_node_client_from_the_export_alone(tmp_path: Path, node_modules: Path) -> None:
    contracts = export(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    email = f"node-{uuid.uuid4().hex[:10]}@example.com"
    with running_server(server_env(data_dir), cwd=data_dir) as server:
        result = run_client(node_modules, contracts, server.addr, email)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    created, got = reply["created"], reply["got"]
    assert created["id"].startswith("acct_")
    assert got == created
    assert (got["display_name"], got["email"], got["currency_code"]) == ("Node Client Ltd", email, "EUR")
    assert got["status"] == "STATUS_ACTIVE"  # the enum, by name
    # A google.protobuf.Timestamp as grpc-js decodes it: int64 seconds (a string here) and nanos.
    created_at = int(got["create_time"]["seconds"]) + got["create_time"]["nanos"] / 1e9
    assert abs(created_at - time.time()) < 600
    assert got["update_time"] == got["create_time"]
    assert got["delete_time"] is None


def test_protos_folder_alone_is_not_enough(tmp_path: Path, node_modules: Path) -> None:
    """Without the export's Google files the same client cannot even load the contract."""
    result = run_client(node_modules, ROOT / "protos", "127.0.0.1:1", "nobody@example.com")
    assert result.returncode != 0
    assert "google/api/annotations.proto" in result.stderr
