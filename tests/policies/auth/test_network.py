"""The client address behind proxies: a forwarded header counts only from trusted proxies."""

from __future__ import annotations

import ipaddress
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from policies.auth.network import client_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def address(peer: str, forwarded: str | None) -> str:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 1234)
    request = make_mocked_request("GET", "/", headers=headers, transport=transport)
    return client_address(request, PROXIES, "X-Forwarded-For")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.5", "1.2.3.4", "203.0.113.5"),  # not a proxy: the header is ignored
        ("10.0.0.2", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.2", "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # left of the last hop is client-written
        ("10.0.0.2", "1.2.3.4, 10.0.0.7", "1.2.3.4"),  # a chain of trusted proxies
        ("10.0.0.2", "garbage", "10.0.0.2"),
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    assert address(peer, forwarded) == expected
