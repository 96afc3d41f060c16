"""A PostgreSQL cluster of the test's own, to stop and start while a server uses it.

The shared server must never be stopped, so a test about outages makes its own with initdb and
pg_ctl (TALLY_TEST_PG_BIN, default /usr/lib/postgresql/15/bin): trust auth, loopback only, a
port of its own and its Unix socket in its own directory. initdb refuses to run as root, so as
root every command runs as the `postgres` user (runuser) in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import free_port, unavailable

PG_BIN = Path(os.environ.get("TALLY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
COMMAND_TIMEOUT_SECONDS = 60


class PrivatePostgres:
    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).is_file():
                unavailable(f"{PG_BIN / tool} not found; set TALLY_TEST_PG_BIN to PostgreSQL's bin directory")
        self._as_user: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="tally-private-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(PG_USER)
            except KeyError:
                shutil.rmtree(self.base)
                unavailable(f"running as root and there is no {PG_USER!r} user to run initdb as")
                raise
            if shutil.which("runuser") is None:
                shutil.rmtree(self.base)
                unavailable("running as root and runuser is not on PATH")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", PG_USER, "--"]
        self.data = self.base / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
            cwd=self.base,
        )
        if result.returncode != 0:
            log = self.base / "server.log"
            server_log = log.read_text() if log.exists() else ""
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}\n{server_log}"
            )

    def init(self) -> None:
        initdb = str(PG_BIN / "initdb")
        self._run(initdb, "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.base / "server.log"),
            "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the cluster if it runs, then delete its files."""
        if (self.data / "postmaster.pid").exists():
            pg_ctl = str(PG_BIN / "pg_ctl")
            subprocess.run(
                [*self._as_user, pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        shutil.rmtree(self.base, ignore_errors=True)
