"""The official OpenAI JavaScript SDK (`openai` from npm, tests/js) against the gateway in
front of a real llama-server: chat, streams, embeddings, the Responses API and the model
routes.

tests/run.sh installs the SDK (`npm ci` in tests/js). Without Node.js or the installed SDK
these tests are skipped, except in CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.local import CHAT_MODEL, EMBED_MODEL

pytestmark = pytest.mark.e2e

JS = Path(__file__).parents[1] / "js"


def node() -> str:
    binary = shutil.which("node")
    problem = None
    if binary is None:
        problem = "Node.js is not installed (the JavaScript SDK tests need node 20 or newer)"
    elif not (JS / "node_modules" / "openai").is_dir():
        problem = "the OpenAI JavaScript SDK is not installed: run `npm ci` in tests/js"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (CI=true: these tests must run, not skip)", pytrace=False)
        pytest.skip(problem)
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def sdk(request: pytest.FixtureRequest) -> dict[str, Any]:
    """What the JavaScript SDK got from each call (tests/js/sdk.mjs), run once."""
    binary = node()  # before the llama-servers and the gateway start
    gateway_process = request.getfixturevalue("gateway_process")
    gateway_process.check_alive()
    run = subprocess.run(
        [binary, str(JS / "sdk.mjs"), gateway_process.url, CHAT_MODEL, EMBED_MODEL],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, f"sdk.mjs failed:\n{run.stderr.decode(errors='replace')}"
    results: dict[str, Any] = orjson.loads(run.stdout)
    return results


def test_the_js_sdk_chats_and_reads_the_usage_and_request_id(sdk: dict[str, Any]) -> None:
    chat = sdk["chat"]
    assert chat["object"] == "chat.completion"
    assert chat["content"].strip()
    assert chat["usage"]["prompt_tokens"] > 0
    assert chat["usage"]["completion_tokens"] > 0
    assert chat["request_id"]


def test_the_js_sdk_reads_a_stream_with_its_usage_chunk(sdk: dict[str, Any]) -> None:
    stream = sdk["stream"]
    assert stream["text"].strip()
    assert stream["finish_reason"] in ("stop", "length")
    usage = stream["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_the_js_sdk_reads_a_stream_without_the_usage_it_did_not_ask_for(
    sdk: dict[str, Any],
) -> None:
    stream = sdk["stream_without_usage"]
    assert stream["text"] == sdk["stream"]["text"]  # temperature 0: the same words
    assert stream["usage"] is None


def test_the_js_sdk_gets_embeddings_as_base64_and_as_floats(sdk: dict[str, Any]) -> None:
    embeddings = sdk["embeddings"]
    assert embeddings["count"] == 2
    assert embeddings["dimensions"] > 100
    # The SDK's default (base64, decoded by it) and floats give the same vector.
    assert embeddings["first"] == pytest.approx(embeddings["plain_first"], rel=1e-5)
    assert embeddings["usage"]["prompt_tokens"] > 0


def test_the_js_sdk_lists_and_retrieves_models(sdk: dict[str, Any]) -> None:
    models = sdk["models"]
    assert sorted(models["listed"]) == sorted([CHAT_MODEL, EMBED_MODEL])
    assert models["one"]["id"] == CHAT_MODEL
    assert models["one"]["object"] == "model"
    assert models["missing"] == {"status": 404, "code": "model_not_found", "param": "model"}


def test_the_js_sdk_uses_the_responses_api_plain_and_streamed(sdk: dict[str, Any]) -> None:
    responses = sdk["responses"]
    assert (responses["object"], responses["status"]) == ("response", "completed")
    assert responses["text"].strip()
    assert 0 < responses["usage"]["output_tokens"] <= 8
    assert responses["streamed"] == responses["text"]  # temperature 0: the same words
    assert responses["last_event"] == "response.completed"
    assert responses["streamed_usage"]["input_tokens"] == responses["usage"]["input_tokens"]
    assert responses["missing"] == {"status": 404}  # the gateway stores no responses
