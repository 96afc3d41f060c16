"""`tally serve --workers N`: one supervisor process and N worker processes sharing the ports.

The supervisor checks both addresses as `tally serve` does (a port in use is refused), then
reserves them: one socket per address, bound with SO_REUSEPORT but never listening, so port 0
becomes one real port that every worker binds too (and nobody without SO_REUSEPORT can take it
meanwhile). It prepares what must happen once (migrations when the settings ask for them, the
generated signing keys of the embedded default) by building the components once, then starts
the workers: `tally serve` with the same flags and environment, the reserved addresses, no
migrations, and a pipe on which each writes one byte once it serves (app.server.serve). Every
worker has its own event loop, database pool and Redis client; the kernel spreads connections
over their listening sockets.

Signals: SIGTERM or SIGINT is forwarded to every worker, which drains and stops as a single
`tally serve` does; the supervisor exits 0 when all of them exited 0. A worker that exits
otherwise is restarted after a delay that doubles up to `BACKOFF_CAP_SECONDS` (reset once a
worker has served for `STABLE_SECONDS`); one that exits before serving `START_ATTEMPTS` times in
a row makes the supervisor stop the others and exit non-zero. Workers run in a process group of
their own (a terminal's Ctrl-C reaches the supervisor only, which forwards it once) and stop
by themselves when the supervisor dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from core.settings import Settings, check_can_listen, parse_host_port

log = logging.getLogger("tally.supervisor")

START_ATTEMPTS = 3
BACKOFF_START_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0
STABLE_SECONDS = 30.0


def reserve(address: str) -> tuple[socket.socket, str]:
    """A socket bound to `address` with SO_REUSEPORT, not listening, and the address with its real
    port (the kernel's choice for port 0)."""
    host, port = parse_host_port(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    holder = socket.socket(family, kind, proto)
    try:
        # SO_REUSEPORT without SO_REUSEADDR: only a bind that also sets SO_REUSEPORT (the workers)
        # shares the port; anyone else, SO_REUSEADDR or not, finds it in use.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(sockaddr)
    except BaseException:
        holder.close()
        raise
    return holder, f"{address.rpartition(':')[0]}:{holder.getsockname()[1]}"


async def prepare(settings: Settings) -> None:
    """What every worker would otherwise race to do: migrate (when the settings say so), generate
    the embedded default's keys; and the checks that would fail in every worker alike."""
    from app.server import build_components

    components = await build_components(settings)
    await components.close()


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started_at: float = 0.0
    exit_code: int | None = None


@dataclass
class Supervisor:
    settings: Settings
    serve_args: list[str]
    grpc_addr: str
    http_addr: str
    workers: list[_Worker] = field(default_factory=list)
    stopping: bool = False
    failed: int | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _announced: bool = False

    def command(self, ready_fd: int) -> list[str]:
        # Later flags win in argparse: the caller's flags, then the ones this mode fixes.
        return [
            sys.executable,
            "-c",
            "from app.cli import main; main()",
            "serve",
            *self.serve_args,
            "--workers",
            "1",
            "--grpc-addr",
            self.grpc_addr,
            "--http-addr",
            self.http_addr,
            "--no-migrate-on-start",
            "--worker-ready-fd",
            str(ready_fd),
        ]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.signal, sig)
        self.workers = [_Worker(index) for index in range(self.settings.workers)]
        await asyncio.gather(*(self._keep(worker) for worker in self.workers))
        if self.failed is not None:
            return self.failed
        codes = [worker.exit_code for worker in self.workers if worker.exit_code is not None]
        if any(codes):
            log.error("stopped; worker exit codes %s", codes)
            return 1
        log.info("stopped: all %d workers drained", len(self.workers))
        return 0

    def signal(self, sig: signal.Signals) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", sig.name, len(self.workers))
        self.stopping = True
        self._stop.set()
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker slot until the supervisor stops: start, wait, restart."""
        failures_before_ready = 0
        delay = BACKOFF_START_SECONDS
        while not self.stopping:
            code = worker.exit_code = await self._run_once(worker)
            if self.stopping:
                return
            pid = worker.proc.pid if worker.proc else 0
            if not worker.ready:
                failures_before_ready += 1
                if failures_before_ready >= START_ATTEMPTS:
                    log.error(
                        "worker %d exited with code %s before serving, %d times in a row: giving up",
                        worker.index,
                        code,
                        failures_before_ready,
                        extra={"worker": worker.index, "pid": pid, "exit_code": code},
                    )
                    self.failed = code or 1
                    self.signal(signal.SIGTERM)
                    return
            else:
                failures_before_ready = 0
                if time.monotonic() - worker.started_at >= STABLE_SECONDS:
                    delay = BACKOFF_START_SECONDS
            log.error(
                "worker %d (pid %d) exited unexpectedly with code %s; restarting in %g s",
                worker.index,
                pid,
                code,
                delay,
                extra={"worker": worker.index, "pid": pid, "exit_code": code},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self.stopping and self.failed is None:
                worker.exit_code = None  # stopped while waiting to restart: nothing ran to drain
            delay = min(delay * 2, BACKOFF_CAP_SECONDS)

    async def _run_once(self, worker: _Worker) -> int:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self.command(write_end),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(write_end,),
                process_group=0,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        worker.ready = False
        worker.started_at = time.monotonic()
        pid = worker.proc.pid
        if self.stopping:  # the signal came while this one was being started
            worker.proc.send_signal(signal.SIGTERM)
        log.info("worker %d started (pid %d)", worker.index, pid, extra={"worker": worker.index, "pid": pid})

        def on_ready() -> None:
            loop.remove_reader(read_end)
            if os.read(read_end, 1):
                worker.ready = True
                self._maybe_announce()

        loop.add_reader(read_end, on_ready)
        try:
            code = await worker.proc.wait()
        finally:
            loop.remove_reader(read_end)
            os.close(read_end)
        log.info(
            "worker %d (pid %d) exited with code %d",
            worker.index,
            pid,
            code,
            extra={"worker": worker.index, "pid": pid, "exit_code": code},
        )
        return code

    def _maybe_announce(self) -> None:
        """The serving line once, when every worker serves: tests and benches wait for it."""
        if self._announced or self.stopping or not all(worker.ready for worker in self.workers):
            return
        self._announced = True
        settings = self.settings
        pids = [worker.proc.pid for worker in self.workers if worker.proc is not None]
        log.info(
            "tally serving gRPC on %s and HTTP on %s (database: %s; rate limits: %s; %d workers, pids %s)",
            self.grpc_addr,
            self.http_addr,
            settings.describe_database(),
            "Redis" if settings.redis_url else "in-process",
            len(pids),
            ", ".join(map(str, pids)),
            extra={
                "grpc_addr": self.grpc_addr,
                "http_addr": self.http_addr,
                "data_dir": str(settings.data_dir),
                "workers": pids,
            },
        )


def supervise(settings: Settings, serve_args: list[str]) -> int:
    """Run `tally serve --workers N` (N > 1) to the end; the exit status."""
    check_can_listen("TALLY_GRPC_ADDR", settings.grpc_addr)
    check_can_listen("TALLY_HTTP_ADDR", settings.http_addr)
    grpc_holder, grpc_addr = reserve(settings.grpc_addr)
    http_holder, http_addr = reserve(settings.http_addr)
    with grpc_holder, http_holder:
        asyncio.run(prepare(settings))
        log.info("supervisor (pid %d) starting %d workers", os.getpid(), settings.workers)
        return asyncio.run(Supervisor(settings, serve_args, grpc_addr, http_addr).run())
