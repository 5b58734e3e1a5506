"""Schemathesis against the live gateway (every policy on, in front of the fake upstream):
every operation of the document the gateway serves, with a bounded number of generated
requests, derandomized (every run sends the same ones). No answer is a 5xx, and every
answer is as documented: its status, its content type, its body (errors in the
documented shape), its headers. Requests that fit the document (positive), and, for the
operations that take a body, requests that do not (negative)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hardening.live import LiveGateway

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = 25  # per operation and mode


class Target:
    def __init__(self, live: LiveGateway, session: requests.Session) -> None:
        self.base = f"http://127.0.0.1:{live.port}"
        self.session = session
        self.headers = {"Authorization": f"Bearer {live.credentials.keys['premium']}"}
        self.document: dict[str, Any] = session.get(f"{self.base}/openapi.json", timeout=30).json()

    def operations(self) -> Iterator[Any]:
        for result in schemathesis.openapi.from_dict(self.document).get_all_operations():
            yield result.ok()

    def check(self, operation: Any, mode: GenerationMode) -> None:
        """`operation`'s generated requests, each answer checked. Most get `model: fake`:
        a drawn name is a 404 before any upstream is called."""

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode), configured=st.integers(0, 3))
        def run(case: Any, configured: int) -> None:
            if configured and isinstance(case.body, dict):
                case.body["model"] = "fake"
            case.call_and_validate(
                base_url=self.base, session=self.session, headers=self.headers, checks=CHECKS
            )

        run()


@pytest.fixture
def target(live: LiveGateway) -> Iterator[Target]:
    with requests.Session() as session:
        yield Target(live, session)


def test_requests_that_fit_the_document_get_the_answers_it_documents(target: Target) -> None:
    tested = 0
    for operation in target.operations():
        target.check(operation, GenerationMode.POSITIVE)
        tested += 1
    assert tested == sum(len(item) for item in target.document["paths"].values()) > 20


def test_requests_that_do_not_fit_it_get_documented_errors(target: Target) -> None:
    tested = 0
    for operation in target.operations():
        if operation.body:  # a path parameter is any string: nothing to make wrong
            target.check(operation, GenerationMode.NEGATIVE)
            tested += 1
    assert tested >= 6
