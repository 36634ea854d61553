"""Failed API keys limited per client address: slow down key guessing.

After ``limit`` failed keys (unknown, revoked or expired) from one address within ``window``
seconds, every request from that address that presents a key is refused with 429 and
``Retry-After`` for ``lockout`` seconds, *without the key being checked*: a guess sent during
the lockout learns nothing. A valid key from a locked-out address is refused too (someone at
that address is guessing; the lockout is short). Keys from other addresses are unaffected.

A success does not clear an address's failures (behind a shared NAT a valid user would
otherwise reset a guesser's count). The table holds at most ``max_addresses`` addresses; the
least recently failed is evicted beyond that, so a flood of distinct addresses costs bounded
memory (each such address is then only slowed down by ``limit`` per window until evicted).

Routes are sync and run in a thread pool: one lock guards the table.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from app.api.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class AuthThrottle:
    def __init__(
        self,
        *,
        limit: int,
        window: float,
        lockout: float,
        max_addresses: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.max_addresses = max_addresses
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._table: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def refuse(self, address: str) -> int | None:
        """When ``address`` is locked out: count a refused request and return the seconds left
        (at least 1, for ``Retry-After``); else None."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            entry = self._table.get(address)
            left = entry.locked_until - now if entry is not None else 0.0
        if left <= 0:
            return None
        if self.metrics is not None:
            self.metrics.auth_refused.inc()
        return max(1, math.ceil(left))

    def failed(self, address: str) -> None:
        """Count a failed key from ``address``; the ``limit``-th in the window locks it out."""
        if not self.enabled:
            return
        now = self.clock()
        started = False
        with self._lock:
            entry = self._table.pop(address, None) or _Entry()
            self._table[address] = entry  # the most recently failed is last
            failures = entry.failures
            failures.append(now)
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) >= self.limit and entry.locked_until <= now:
                entry.locked_until = now + self.lockout
                failures.clear()  # after the lockout: ``limit`` more tries, then again
                started = True
            self._evict(now)
        if started:
            log.warning(
                "authentication lockout: %s sent %d failed API keys within %gs; keys from it "
                "are refused (429) for %gs",
                address,
                self.limit,
                self.window,
                self.lockout,
            )
            if self.metrics is not None:
                self.metrics.auth_lockouts.inc()

    def _evict(self, now: float) -> None:
        table = self._table
        # Stale entries at the front (least recently failed): nothing left to remember.
        while table:
            address, entry = next(iter(table.items()))
            recent = bool(entry.failures) and entry.failures[-1] > now - self.window
            if entry.locked_until > now or recent:
                break
            del table[address]
        while len(table) > self.max_addresses:
            table.popitem(last=False)
