"""The supervisor of `tally serve --workers N` with stand-in workers (real processes, tiny scripts):
a worker that exits before serving, again and again, makes it give up with a non-zero status;
SIGTERM reaches every worker and a clean exit of all of them is 0; a reserved port is shared."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
from dataclasses import dataclass

import pytest

from app import supervisor
from core.settings import Settings
from tests.support import eventually

# Writes one byte on the ready pipe, then waits for SIGTERM and exits with the given status.
_SERVES = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
    "fd = int(sys.argv[1]); os.write(fd, b'1'); os.close(fd); "
    "signal.sigwait({signal.SIGTERM}); sys.exit(int(sys.argv[2]))"
)


@dataclass
class _Stand(supervisor.Supervisor):
    script: str = ""
    exit_status: int = 0

    def command(self, ready_fd: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(ready_fd), str(self.exit_status)]


def _stand(script: str, workers: int = 2, exit_status: int = 0) -> _Stand:
    settings = Settings(workers=workers)
    return _Stand(settings, [], "127.0.0.1:1", "127.0.0.1:2", script=script, exit_status=exit_status)


async def test_workers_failing_before_serving_make_the_supervisor_give_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_START_SECONDS", 0.01)
    stand = _stand("import sys; sys.exit(3)")
    assert await stand.run() == 3
    assert all(worker.exit_code is not None for worker in stand.workers)


async def _signal_when_all_ready(stand: _Stand) -> None:
    async def all_ready() -> bool:
        return len(stand.workers) == 2 and all(worker.ready for worker in stand.workers)

    await eventually(all_ready, within=20, what="both stand-in workers ready")
    stand.signal(signal.SIGTERM)


async def test_sigterm_reaches_every_worker_and_a_clean_stop_is_0() -> None:
    stand = _stand(_SERVES)
    code, _ = await asyncio.gather(stand.run(), _signal_when_all_ready(stand))
    assert code == 0
    assert [worker.exit_code for worker in stand.workers] == [0, 0]


async def test_a_worker_failing_its_stop_makes_the_status_non_zero() -> None:
    stand = _stand(_SERVES, exit_status=1)
    code, _ = await asyncio.gather(stand.run(), _signal_when_all_ready(stand))
    assert code == 1


def test_a_reserved_port_zero_is_one_real_port_that_workers_can_share() -> None:
    holder, address = supervisor.reserve("127.0.0.1:0")
    with holder:
        port = int(address.rpartition(":")[2])
        assert port != 0
        with socket.socket() as plain:
            # Without SO_REUSEPORT (a single `tally serve`, anyone else) the port is taken ...
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="in use") as refused:
                plain.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE
        listeners = [socket.socket() for _ in range(2)]
        try:
            for listener in listeners:  # ... and the workers all bind and listen on it.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                listener.bind(("127.0.0.1", port))
                listener.listen()
        finally:
            for listener in listeners:
                listener.close()
