"""When a failed call is tried again, and after how long: pure logic, shared by both clients.

A retry is made only when it cannot do a thing twice:
- UNAVAILABLE: the server was not reached, or went away; every call retries it.
- DEADLINE_EXCEEDED and ABORTED: the server may have done the work, so only a call that
  carries an idempotency key (`request_id`, `event_id`, a producer's sequence) retries them;
  the server answers the retry with the first result.
- RESOURCE_EXHAUSTED: after the delay the server's RetryInfo asks for, and only with one.
Nothing else retries (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ALREADY_EXISTS, ...):
sending the same request again would get the same answer.

Waits grow exponentially with jitter, and every call has a budget: the attempts and waits of
one logical call stop once `total_budget` seconds have gone, whatever `max_attempts` says.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from tally_client._errors import TallyError

_ALWAYS = frozenset({grpc.StatusCode.UNAVAILABLE})
_WITH_ID = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one logical call tries.

    `jitter` is the fraction of each backoff that is random (0: none, 1: anywhere between 0
    and the full backoff). `total_budget` bounds the time from the first attempt to the
    start of the last one, waits included.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    total_budget: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("backoffs must satisfy 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")
        if self.total_budget <= 0:
            raise ValueError(f"total_budget must be positive, got {self.total_budget}")


NO_RETRY = RetryPolicy(max_attempts=1)


def is_retryable(error: TallyError, *, idempotent: bool) -> bool:
    """True when trying the same request again is safe and may get another answer."""
    if error.code in _ALWAYS:
        return True
    if error.code in _WITH_ID:
        return idempotent
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.retry_delay is not None
    return False


def backoff(policy: RetryPolicy, retry_number: int, rand: Callable[[], float] = random.random) -> float:
    """The wait before retry number `retry_number` (1 for the first retry), jitter applied."""
    base = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (retry_number - 1))
    return base * (1 - policy.jitter * rand())


@dataclass(slots=True)
class RetryState:
    """One logical call's attempts so far; `next_delay` decides about each failure.

    `started` is the clock reading at the first attempt (time.monotonic or the loop's time).
    """

    policy: RetryPolicy
    idempotent: bool
    started: float
    attempts: int = 0
    rand: Callable[[], float] = random.random

    def next_delay(self, error: TallyError, now: float) -> float | None:
        """Seconds to wait before trying again, or None when `error` is the call's answer."""
        if not is_retryable(error, idempotent=self.idempotent) or self.attempts >= self.policy.max_attempts:
            return None
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None:
            # The server knows when the bucket refills; a shorter wait would only be refused again.
            delay = error.retry_delay
        else:
            delay = backoff(self.policy, self.attempts, self.rand)
        if now + delay - self.started > self.policy.total_budget:
            return None
        return delay

    def attempt_timeout(self, default_timeout: float | None, now: float) -> float | None:
        """The deadline of the next attempt: the call's timeout, cut to what is left of the budget."""
        left = self.policy.total_budget - (now - self.started)
        if default_timeout is None:
            return max(left, 0.001)
        return max(min(default_timeout, left), 0.001)
