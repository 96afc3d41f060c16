"""A real `tally serve` for the client's tests, restartable on its port, and a proxy that holds replies.

The server runs on the embedded SQLite database in a folder of the test's own, so a restart finds
every row again and the test counts stored rows straight from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.e2e.harness import RunningServer, launched_server, server_env
from tests.support import free_port

NO_RATE_LIMITS = json.dumps(
    {"default": {"rate": 100000, "burst": 100000}, "auth": {"rate": 100000, "burst": 100000}}
)
BOUND_SECONDS = 30.0  # the longest any condition below is waited for: a hang guard, not a timing


class TallyProcess:
    """`tally serve` on a fixed loopback port; kill() is SIGKILL, start() again brings it back."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = server_env(
            data_dir,
            TALLY_GRPC_ADDR=f"127.0.0.1:{self.port}",
            **{"TALLY_RATE_LIMITS": NO_RATE_LIMITS, **settings},
        )
        self._context: AbstractContextManager[RunningServer] | None = None
        self.server: RunningServer | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        context = launched_server(self.env, self.data_dir)
        server = context.__enter__()
        server.wait_for_marker()
        self._context, self.server = context, server
        self.starts += 1

    def kill(self) -> None:
        if self._context is not None:
            context, self._context, self.server = self._context, None, None
            context.__exit__(None, None, None)

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows of a query on the server's database file (committed rows only)."""
        connection = sqlite3.connect(self.data_dir / "tally.db", timeout=BOUND_SECONDS)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def wait_for_row(self, sql: str, *params: object) -> None:
        """Poll the database until `sql` returns a row; fail past BOUND_SECONDS."""
        deadline = time.monotonic() + BOUND_SECONDS
        while not self.rows(sql, *params):
            if time.monotonic() > deadline:
                pytest.fail(f"no row for {sql!r} {params} within {BOUND_SECONDS} s")
            time.sleep(0.01)


@contextlib.contextmanager
def tally_process(data_dir: Path, **settings: str) -> Iterator[TallyProcess]:
    process = TallyProcess(data_dir, **settings)
    process.start()
    try:
        yield process
    finally:
        process.kill()


class HoldingProxy:
    """A TCP proxy on loopback in front of a server: while holding, the server's bytes wait.

    Requests go through at once, so the server does the work; its replies are kept until
    release(), which makes a server that answers slowly past any deadline. When the server's
    side of a connection closes (the server was killed), the client's side closes too and
    whatever was held is dropped, as a reply lost with its server is.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._released = asyncio.Event()
        self._released.set()
        self.held_chunks = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="holding-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(BOUND_SECONDS):
            pytest.fail("the proxy did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hold(self) -> None:
        self._loop.call_soon_threadsafe(self._released.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._released.set)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(BOUND_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(BOUND_SECONDS)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        upward = asyncio.ensure_future(self._forward(client_reader, server_writer))
        reading = asyncio.ensure_future(self._read_replies(server_reader, replies))
        writing = asyncio.ensure_future(self._write_replies(replies, client_writer))
        await asyncio.wait([upward, reading, writing], return_when=asyncio.FIRST_COMPLETED)
        if reading.done() and self._released.is_set():
            # The server closed while nothing was held: pass on what it said last.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writing), BOUND_SECONDS)
        for task in (upward, reading, writing):
            task.cancel()
        await asyncio.gather(upward, reading, writing, return_exceptions=True)
        for writer in (client_writer, server_writer):
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()

    async def _read_replies(self, reader: asyncio.StreamReader, replies: asyncio.Queue[bytes | None]) -> None:
        """Queue the server's bytes as they come, so its closing is seen even while they are held."""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if not self._released.is_set():
                    self.held_chunks += 1
                replies.put_nowait(chunk)
        replies.put_nowait(None)

    async def _write_replies(
        self, replies: asyncio.Queue[bytes | None], writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while (chunk := await replies.get()) is not None:
                await self._released.wait()
                writer.write(chunk)
                await writer.drain()


class RetryLog(logging.Handler):
    """Collects the client's retry records (method, code, attempt, delay); `on_retry` runs for each."""

    def __init__(self, on_retry: Callable[[logging.LogRecord], None] | None = None) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.on_retry = on_retry

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "tally_code"):
            self.records.append(record)
            if self.on_retry is not None:
                self.on_retry(record)

    def codes(self) -> list[str]:
        return [str(getattr(record, "tally_code", "")) for record in self.records]


@contextlib.contextmanager
def retry_log(
    on_retry: Callable[[logging.LogRecord], None] | None = None,
) -> Iterator[tuple[RetryLog, logging.Logger]]:
    """A logger of the test's own for a client's Config, with a RetryLog on it."""
    logger = logging.getLogger(f"tally_client.test.{id(on_retry)}.{time.monotonic_ns()}")
    logger.propagate = False
    handler = RetryLog(on_retry)
    logger.addHandler(handler)
    try:
        yield handler, logger
    finally:
        logger.removeHandler(handler)
