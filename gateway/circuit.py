"""A circuit breaker per upstream, fed by the outcome of real calls (not only `/health`).

Closed: traffic flows; enough failures (consecutive, or a share of a window of calls)
open it. Open: `Pool.pick` skips the upstream for the cool-down. Then half-open: exactly
one request (the trial) may go; its success closes the circuit, its failure opens it
again. Outcomes of calls that were not the trial (sent before the circuit opened) change
nothing while it is open or half-open.

Cost while closed and healthy: one integer compare in `Upstream.usable` and one in
`success`; the window is kept only when `failure_ratio` is set.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from gateway.resilience import BreakerConfig

log = logging.getLogger("gateway.circuit")

# The values of `llama_gateway_upstream_circuit_state`.
CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = ("closed", "half-open", "open")


class Circuit:
    __slots__ = (
        "clock",
        "config",
        "failed",
        "model",
        "name",
        "recent",
        "reopen_at",
        "state",
        "trial",
    )

    def __init__(
        self,
        config: BreakerConfig,
        name: str,
        model: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.name, self.model, self.clock = config, name, model, clock
        self.state = CLOSED
        self.failed = 0  # consecutive failures while closed
        self.recent: deque[bool] | None = (
            deque(maxlen=config.window) if config.failure_ratio is not None else None
        )
        self.reopen_at = 0.0
        self.trial = False  # the half-open circuit's one request is on its way

    def admits(self) -> bool:
        """May the upstream be picked now (an open circuit turns half-open once cooled)."""
        if self.state == OPEN:
            if self.clock() < self.reopen_at:
                return False
            self._move(HALF_OPEN)
        return self.state == CLOSED or not self.trial

    def current(self) -> int:
        """The state as the gauge shows it: an open circuit that has cooled is half-open."""
        self.admits()
        return self.state

    def take(self) -> bool:
        """Called for the picked upstream: True when this request is the half-open trial."""
        if self.admits() and self.state == HALF_OPEN:
            self.trial = True
            return True
        return False

    def success(self, trial: bool) -> None:
        if self.state == CLOSED:
            if self.failed:
                self.failed = 0
            if self.recent is not None:
                self.recent.append(False)
        elif trial:
            self._move(CLOSED)

    def failure(self, trial: bool) -> None:
        config = self.config
        if not config.enabled:
            return
        if self.state == CLOSED:
            self.failed += 1
            recent = self.recent
            if recent is not None:
                recent.append(True)
            if self.failed >= config.failures or (
                recent is not None
                and len(recent) == recent.maxlen
                and sum(recent) >= len(recent) * (config.failure_ratio or 1)
            ):
                self._move(OPEN)
        elif trial:
            self._move(OPEN)

    def abandon(self, trial: bool) -> None:
        """The trial ended without a verdict (its client hung up): another may go."""
        if trial and self.state == HALF_OPEN:
            self.trial = False

    def _move(self, state: int) -> None:
        self.state = state
        self.trial = False
        if state == OPEN:
            self.reopen_at = self.clock() + self.config.cooldown_seconds
        else:
            self.failed = 0
            if self.recent is not None:
                self.recent.clear()
        level = logging.INFO if state == CLOSED else logging.WARNING
        log.log(
            level,
            "circuit of upstream %s is %s",
            self.name,
            STATE_NAMES[state],
            extra={"upstream": self.name, "model": self.model, "circuit": STATE_NAMES[state]},
        )
