"""One hostile request against the live gateway, and every check on its answer."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from gateway.endpoints import ENDPOINTS
from tests.hardening.checks import (
    check_error_shape,
    check_lengths,
    check_no_leak,
    check_status,
    refused_unparsed,
)
from tests.hardening.live import LiveGateway
from tests.hardening.wire import Answer, Header, exchange, request

# Requests the policy chain serves (anything else is a route of the core or a 404).
CHAIN = {(e.method, e.path) for e in ENDPOINTS if "{" not in e.path}


@dataclass(frozen=True)
class Attempt:
    method: str
    path: str
    headers: list[Header] = field(default_factory=list)
    body: bytes | None = None
    target: bytes | None = None  # the request target when it is not `path` (a query string)
    cap: int | None = None  # the caller's tier's max_tokens
    forged: bool = False  # the credential must let nothing through to the upstream
    secrets: tuple[str, ...] = ()  # more strings no log line may contain (canaries)


class Attacker:
    """Sends attempts and checks each answer; remembers what the usage store must hold."""

    def __init__(self, live: LiveGateway) -> None:
        self.live = live
        self.secrets = live.credentials.secrets()
        self._ids = itertools.count()
        # Request IDs that must each have a usage row (as many as requests carried them).
        self.expected_ids: Counter[str] = Counter()
        # Requests to /v1 whose ID is unknown (a hostile one replaced, no answer): they may
        # or may not have entered the chain.
        self.unknown = 0

    def send(self, attempt: Attempt) -> Answer:
        return self.live.run(self._send(attempt))

    async def _send(self, attempt: Attempt) -> Answer:
        mark = self.live.lines.mark()
        answer, received, answered = await self._exchange(attempt)
        self.check(attempt, answer, received, answered, mark)
        return answer

    async def _exchange(
        self, attempt: Attempt
    ) -> tuple[Answer, list[tuple[str, bytes]], list[int]]:
        headers, own_id = attempt.headers, None
        if not any(name.lower() == b"x-request-id" for name, _ in headers):
            own_id = f"fuzz-{next(self._ids)}"
            headers = [*headers, (b"X-Request-ID", own_id.encode())]
        data = request(attempt.method, attempt.target or attempt.path, headers, attempt.body)
        answer = None
        try:
            answer = await exchange(self.live.port, data, head=attempt.method == "HEAD")
        finally:
            received, answered = self.live.take_upstream()
            self._expect(attempt, own_id, answer)
        return answer, received, answered

    def _expect(self, attempt: Attempt, own_id: str | None, answer: Answer | None) -> None:
        """Note the usage row this request must have left, if it entered the chain."""
        if not attempt.path.startswith("/v1/"):
            return
        echoed = answer.headers.get("x-request-id") if answer is not None else None
        refused_by_parser = answer is not None and refused_unparsed(answer)
        if own_id is not None and (attempt.method, attempt.path) in CHAIN and not refused_by_parser:
            self.expected_ids[own_id] += 1
        elif echoed is not None:
            self.expected_ids[echoed] += 1
        else:
            self.unknown += 1

    def check(
        self,
        attempt: Attempt,
        answer: Answer,
        received: list[tuple[str, bytes]],
        answered: list[int],
        mark: int,
    ) -> None:
        """Every property of one answer (`mark`: the log lines written since)."""
        check_status(answer, answered)
        check_error_shape(answer, answered, head=attempt.method == "HEAD", path=attempt.path)
        if (attempt.method, attempt.path) in CHAIN and not refused_unparsed(answer):
            assert answer.headers.get("x-request-id"), (
                f"{attempt.method} {attempt.path} answered without X-Request-ID"
            )
        if attempt.forged:
            assert not received, f"a forged credential reached the upstream: {answer.status}"
        check_lengths(received, attempt.cap)
        check_no_leak(self.live.lines.since(mark), [*self.secrets, *attempt.secrets])


_CHAT = b'{"model":"fake","messages":[{"role":"user","content":"hi"}]}'


async def still_serving(live: LiveGateway) -> None:
    """A normal request after the attack: the gateway and its chain still work."""
    auth = (b"Authorization", b"Bearer " + live.credentials.keys["premium"].encode())
    answer = await exchange(live.port, request("POST", "/v1/chat/completions", [auth], _CHAT))
    assert answer.status == 200, f"the gateway stopped serving: {answer.status} {answer.body!r}"
    live.take_upstream()
