"""The client's address, trusting a forwarded header only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: IpAddress, proxies: Sequence[IpNetwork]) -> bool:
    return any(address in net for net in proxies)


def client_address(request: web.Request, proxies: Sequence[IpNetwork], header: str) -> str:
    """The connection's peer, or, when that peer is a trusted proxy, the right-most address
    in `header` that is not itself a trusted proxy (addresses to its left are client-supplied
    and could be forged)."""
    peer = _parse(request.remote or "")
    if peer is None:
        return request.remote or "unknown"
    if not proxies or not _trusted(peer, proxies):
        return str(peer)
    hops = [h for part in request.headers.getall(header, []) for h in part.split(",")]
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            break
        if not _trusted(address, proxies):
            return str(address)
    return str(peer)
