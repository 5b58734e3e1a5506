"""The request's `Cache-Control`: `no-cache` (answer afresh, store it) and `no-store`
(neither read nor write). Anything else in the header is ignored, never refused."""

from __future__ import annotations

from multidict import CIMultiDictProxy

NO_CACHE = "no-cache"
NO_STORE = "no-store"


def directives(headers: CIMultiDictProxy[str]) -> tuple[bool, bool]:
    """(no-cache, no-store) as the request's Cache-Control headers ask."""
    values = headers.getall("Cache-Control", ())
    if not values:
        return False, False
    names = set()
    for value in values:
        for part in value.split(","):
            names.add(part.partition("=")[0].strip().lower())
    return NO_CACHE in names, NO_STORE in names
