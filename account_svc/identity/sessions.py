"""Is a login session still live? Asked for every call made with a session's access token.

Answers are cached briefly so a busy client costs one database read per
session every few seconds, not one per call. A session ended on this process
(logout, a reused refresh token, its account deleted) is refused at once (the
use case calls `forget` after commit); on other replicas within `live_for`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from account_svc.unit_of_work import IdentityUnitOfWork
from core.clock import Clock


class SessionCache:
    def __init__(
        self,
        new_reader: Callable[[], IdentityUnitOfWork],
        clock: Clock,
        *,
        live_for: float = 5.0,
        max_entries: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._new_reader = new_reader
        self._clock = clock
        self._live_for = live_for
        self._max = max_entries
        self._monotonic = monotonic
        self._live_until: OrderedDict[str, float] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()

    async def is_live(self, session_id: str) -> bool:
        if session_id in self._ended:
            return False
        until = self._live_until.get(session_id)
        if until is not None and until > self._monotonic():
            return True
        async with self._new_reader() as reader:
            session = await reader.identity.get_session(session_id)
        live = session is not None and session.revoke_time is None and session.expire_time > self._clock.now()
        if live:
            self._remember(self._live_until, session_id, self._monotonic() + self._live_for)
        else:
            self.forget(session_id)
        return live

    def forget(self, session_id: str) -> None:
        """The session ended (logout, reuse detected): refuse its tokens from now on."""
        self._live_until.pop(session_id, None)
        self._remember(self._ended, session_id, None)

    def _remember(
        self, table: OrderedDict[str, float] | OrderedDict[str, None], key: str, value: object
    ) -> None:
        table[key] = value  # type: ignore[assignment]
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)
