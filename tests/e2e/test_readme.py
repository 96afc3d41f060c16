"""The README's shell examples, run as written and in order, so the front door cannot drift.

Every ```sh block of README.md is an example (the only fence for shell: a ```bash, ```shell
or ```console block fails `test_readme_fences_and_markers`, so no example can dodge this
test). The blocks run in one bash session, as a reader's second terminal would, in a fresh
directory laid out like a clone (the repository's files linked in, `.venv/bin` this
interpreter's, no `.tally`), against the suite's PostgreSQL (a new, empty database in
DATABASE_URL) and Redis (REDIS_URL). A block passes when no command in it fails.

An HTML comment on the line before a block changes how it runs:

    <!-- readme-test: skip (why) -->    not run; a skipped test here, with its reason
    <!-- readme-test: server (why) -->  serves until stopped: started in the background with
                                        the session's environment, on free loopback ports, and
                                        waited for until it logs that it serves; later blocks
                                        find it in TALLY_GRPC_ADDR and TALLY_HTTP_ADDR
    <!-- readme-test: exit N (why) -->  an error example: the commands that fail exit N, and
                                        at least one does

A line `# -> TEXT` under a command is output the block must print: each part of TEXT between
`...` must appear, in order, with any whitespace matching any whitespace.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.harness import RunningServer, launched_server
from tests.support import REDIS_URL, empty_postgres_database

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK_DEADLINE_SECONDS = 90.0
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(skip|server|exit \d+)\s*(?:\((.+)\))?\s*-->\s*$")
_EXPECTED = re.compile(r"^\s*# -> (.+)$", re.MULTILINE)
_SHELL_FENCES = ("bash", "shell", "console", "zsh", "shell-session")
_DONE = "::readme-test-done::"
_FAILED = "::readme-test-failed::"


@dataclass(frozen=True)
class Block:
    number: int
    line: int  # of the opening fence in README.md
    code: str
    mode: str = "run"  # run, skip, server or exit
    exit_code: int = 0
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.number:02d}-line{self.line}-{self.mode}"

    @property
    def expected(self) -> list[str]:
        return _EXPECTED.findall(self.code)


def parse_readme(text: str) -> tuple[list[Block], list[str]]:
    """The ```sh blocks in order, and the problems found (a marker not before a block, a shell
    example under another fence, a marker this test does not know)."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    marker: tuple[int, str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("<!-- readme-test"):
            found = _MARKER.match(line.strip())
            if found is None:
                problems.append(f"line {index + 1}: not a known readme-test marker: {line.strip()}")
            else:
                marker = (index + 1, found.group(1), found.group(2) or "")
        fence = _FENCE.match(line)
        if fence is None:
            if marker is not None and marker[0] != index + 1:
                problems.append(f"line {marker[0]}: a readme-test marker must be right before a ```sh block")
                marker = None
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), len(lines))
        language, code = fence.group(1), "\n".join(lines[index + 1 : end]) + "\n"
        if language in _SHELL_FENCES:
            problems.append(f"line {index + 1}: shell examples use ```sh (found ```{language})")
        if language == "sh":
            blocks.append(_block(len(blocks) + 1, index + 1, code, marker, problems))
        elif marker is not None:
            problems.append(f"line {marker[0]}: a readme-test marker before a ```{language} block")
        marker = None
        index = end + 1
    return blocks, problems


def _block(
    number: int, line: int, code: str, marker: tuple[int, str, str] | None, problems: list[str]
) -> Block:
    if marker is None:
        return Block(number, line, code)
    _, mode, reason = marker
    if not reason:
        problems.append(f"line {line - 1}: say why in the marker: readme-test: {mode} (why)")
    if mode.startswith("exit "):
        return Block(number, line, code, "exit", int(mode.split()[1]), reason)
    return Block(number, line, code, mode, reason=reason)


def matches(expected: str, output: str) -> bool:
    """Whether each `...`-separated part of `expected` appears in `output`, in order, whitespace loose."""
    text = " ".join(output.split())
    position = 0
    for part in (" ".join(piece.split()) for piece in expected.split("...")):
        found = text.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


BLOCKS, PROBLEMS = parse_readme(README.read_text())


# --- the session: a fresh directory, one bash, the servers it starts -------------------------------


@dataclass
class Outcome:
    output: str
    failures: list[tuple[int, str]]  # (exit status, command) of every command that failed


class Shell:
    """One bash process reading commands from a pipe; each block's output comes back up to a marker."""

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, name="readme-bash", daemon=True).start()
        # A failing command is reported, and the session carries on as a reader's terminal would.
        self._send(f'set -E -o pipefail; trap \'printf "{_FAILED} %s %s\\n" "$?" "$BASH_COMMAND" >&2\' ERR')

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def run(self, name: str, code: str) -> Outcome:
        script = self.scratch / f"{name}.sh"
        script.write_text(code)
        self._send(f"source {shlex.quote(str(script))} </dev/null 2>&1; printf '\\n{_DONE}\\n'")
        output: list[str] = []
        failures: list[tuple[int, str]] = []
        while True:
            try:
                line = self._lines.get(timeout=BLOCK_DEADLINE_SECONDS)
            except queue.Empty:
                pytest.fail(f"no end of the block within {BLOCK_DEADLINE_SECONDS:.0f} s:\n{''.join(output)}")
            if line is None:
                pytest.fail(f"the shell exited during the block:\n{''.join(output)}")
            if line.strip() == _DONE:
                return Outcome("".join(output), failures)
            if line.startswith(_FAILED):
                status, _, command = line.removeprefix(_FAILED).strip().partition(" ")
                if not command.startswith(f"source {script}"):
                    failures.append((int(status), command))
            else:
                output.append(line)

    def snapshot(self) -> tuple[dict[str, str], Path]:
        """The session's exported environment and working directory, for a server it starts."""
        env_file, cwd_file = self.scratch / "env", self.scratch / "cwd"
        self.run("snapshot", f"env -0 > {shlex.quote(str(env_file))}; pwd > {shlex.quote(str(cwd_file))}\n")
        pairs = (entry.partition("=") for entry in env_file.read_text().split("\0") if entry)
        return {name: value for name, _, value in pairs}, Path(cwd_file.read_text().strip())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)


def fresh_clone(base: Path) -> Path:
    """A directory laid out like a clone after `make`: the repository's files linked in, `.venv`
    standing for this interpreter's environment (marked installed, so `make run` only serves)."""
    clone = base / "clone"
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".venv", ".tally"):
            (clone / entry.name).symlink_to(entry)
    venv = clone / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent)
    # With its pyvenv.cfg and lib beside bin, .venv/bin/python is this environment's interpreter
    # too (make's recipes run it), not a bare Python without the installed packages.
    for name in ("pyvenv.cfg", "lib"):
        if (Path(sys.prefix) / name).exists():
            (venv / name).symlink_to(Path(sys.prefix) / name)
    (venv / ".installed").touch()
    return clone


@dataclass
class ReadmeSession:
    shell: Shell
    servers: contextlib.ExitStack
    done: dict[int, Outcome | str] = field(default_factory=dict)  # block number -> outcome or failure

    def run_through(self, block: Block) -> Outcome:
        """Run `block`, after any earlier one not run yet (so one block can be run on its own)."""
        for earlier in BLOCKS[: block.number - 1]:
            if earlier.mode != "skip" and earlier.number not in self.done:
                self._run(earlier)
        failed_before = [n for n in range(1, block.number) if isinstance(self.done.get(n), str)]
        if failed_before:
            pytest.fail(f"not run: README block {failed_before[0]} failed before it", pytrace=False)
        return self._run(block)

    def _run(self, block: Block) -> Outcome:
        try:
            outcome = (
                self._start_server(block) if block.mode == "server" else self.shell.run(block.id, block.code)
            )
            self.done[block.number] = outcome
        except BaseException as exc:  # recorded, then raised again
            self.done[block.number] = str(exc)
            raise
        return outcome

    def _start_server(self, block: Block) -> Outcome:
        env, cwd = self.shell.snapshot()
        env.update(TALLY_GRPC_ADDR="127.0.0.1:0", TALLY_HTTP_ADDR="127.0.0.1:0")
        server: RunningServer = self.servers.enter_context(
            launched_server(env, cwd, command=["bash", "-c", block.code])
        )
        server.wait_for_marker()
        self.shell.run(
            "addresses", f"export TALLY_GRPC_ADDR={server.addr} TALLY_HTTP_ADDR={server.http_addr}\n"
        )
        return Outcome(server.stderr, [])


@pytest.fixture(scope="module")
async def readme_database() -> AsyncIterator[str]:
    """A new, empty database for the production example (its `tally migrate` creates the schema)."""
    async with empty_postgres_database("tally_readme") as url:
        yield url


@pytest.fixture(scope="module")
def readme(readme_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadmeSession]:
    base = tmp_path_factory.mktemp("readme")
    clone = fresh_clone(base)
    scratch = base / "blocks"
    scratch.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("TALLY_")}
    env.update(DATABASE_URL=readme_database, REDIS_URL=REDIS_URL, KEYS_DIR=str(base / "keys"))
    shell = Shell(env, clone, scratch)
    with contextlib.ExitStack() as servers:
        try:
            yield ReadmeSession(shell, servers)
        finally:
            shell.close()


# --- the tests -------------------------------------------------------------------------------------


def test_readme_fences_and_markers() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert BLOCKS, "README.md has no ```sh block"
    assert any(block.mode == "server" for block in BLOCKS), "no README block starts the server"


def test_loose_output_matching() -> None:
    assert matches('"status": ... "SERVING"', '{\n  "status":   "SERVING"\n}')
    assert not matches("b ... a", "a b")
    assert not matches('"status": "SERVING"', '"status": "NOT_SERVING"')


@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block(block: Block, readme: ReadmeSession) -> None:
    if block.mode == "skip":
        pytest.skip(f"README.md line {block.line}: {block.reason}")
    outcome = readme.run_through(block)
    shown = f"README.md line {block.line}:\n{block.code}\n--- output ---\n{outcome.output}"
    if block.mode == "exit":
        assert outcome.failures, f"expected a command to exit {block.exit_code}, none failed\n{shown}"
        wrong = [(status, command) for status, command in outcome.failures if status != block.exit_code]
        assert not wrong, f"expected exit {block.exit_code}, got {wrong}\n{shown}"
    else:
        assert not outcome.failures, f"commands failed (exit status, command): {outcome.failures}\n{shown}"
    missing = [text for text in block.expected if not matches(text, outcome.output)]
    assert not missing, f"expected output not printed: {missing}\n{shown}"
