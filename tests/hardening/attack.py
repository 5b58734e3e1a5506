"""One hostile request against the live gateway, and every check on its answer."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from tests.hardening.checks import check_error_shape, check_lengths, check_no_leak, check_status
from tests.hardening.live import LiveGateway
from tests.hardening.wire import Answer, Header, exchange, request

# Requests the policy chain serves (anything else is a route of the core or a 404).
CHAIN = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
}


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
        self.answered_ids: Counter[str] = Counter()  # X-Request-ID of each chain answer
        self.unanswered = 0  # chain requests whose answer never came (their ID is unknown)

    def send(self, attempt: Attempt) -> Answer:
        return self.live.run(self._send(attempt))

    async def _send(self, attempt: Attempt) -> Answer:
        headers = attempt.headers
        if not any(name.lower() == b"x-request-id" for name, _ in headers):
            headers = [*headers, (b"X-Request-ID", f"fuzz-{next(self._ids)}".encode())]
        data = request(attempt.method, attempt.target or attempt.path, headers, attempt.body)
        mark = self.live.lines.mark()
        head = attempt.method == "HEAD"
        try:
            answer = await exchange(self.live.port, data, head=head)
        except BaseException:
            if attempt.path.startswith("/v1/"):
                self.unanswered += 1
            raise
        finally:
            received, answered = self.live.take_upstream()
        chain = (attempt.method, attempt.path) in CHAIN
        request_id = answer.headers.get("x-request-id")
        if attempt.path.startswith("/v1/") and request_id is not None:
            self.answered_ids[request_id] += 1
        check_status(answer, answered)
        check_error_shape(answer, answered, head=head)
        if chain:
            assert request_id, f"{attempt.method} {attempt.path} answered without X-Request-ID"
        if attempt.forged:
            assert not received, f"a forged credential reached the upstream: {answer.status}"
        check_lengths(received, attempt.cap)
        check_no_leak(self.live.lines.since(mark), [*self.secrets, *attempt.secrets])
        return answer
