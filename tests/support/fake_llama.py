"""A fake llama-server for fast tests of failure modes and for the benchmark.

It answers like llama-server (shapes from its sources) and misbehaves on request: a
request body may carry `"fake": {...}` (the gateway passes unknown fields through):

- `status`: answer this HTTP status with llama-server's error shape (in plain text with
  `plain`)
- `first_byte_delay`: seconds to wait before the response head
- `chunks`: number of content events in a stream (default 3)
- `delay`: seconds between stream events
- `drop_after`: close the connection abruptly after this many events
- `error_after`: send a `data: {"error": ...}` event after this many events and stop
- `hang_after`: stop sending (but keep the connection) after this many events
- `usage`: "separate" (default, only with include_usage), "always" (mid-2025 builds),
  "in_final" (old builds: usage inside the finishing chunk)
- `unique`: true: the answer's text names the call (`call7 ...`): no two calls answer alike
- `finish_reason`: the finish reason of the answer (default "stop")
- `tool_call`: true: a chat answer that calls a tool

`/v1/completions` answers in llama-server's `text_completion` shape (choices with `text`);
`/v1/responses` and `/v1/messages` in their APIs' shapes (`tests.support.fake_apis`), where
`stop_reason` sets a Messages answer's stop reason. The headers of every request are kept
in `headers`. Rerank, tokenize and detokenize answer as llama-server does
(`tests.support.fake_tokens`); `reranking = False`: a server without `--reranking` (501).

Whole-server switches, for failover tests: `fail(status, n)` answers the next `n` calls
(generation and embeddings) with `status` (503 with llama-server's loading message), and
`fail(0, n)` drops their connections before any response head; `/health` stays 200.

Answers report the prompt cache as llama-server does (`usage.prompt_tokens_details.
cached_tokens` and `timings.cache_n`): `cached_tokens` sets the number (or any value),
`cache_details = False` leaves out `prompt_tokens_details` (builds before 2026).

Run it alone: `python -m tests.support.fake_llama --port 9000` (from the top of the repository).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.support import fake_answers, fake_tokens
from tests.support.fake_answers import PROMPT_TOKENS, PromptCache, Shape, chunk_base, sse
from tests.support.fake_apis import MessagesShape, ResponsesShape

# The routes whose answers have shapes of their own, and those shapes.
_API_SHAPES = {"/v1/responses": ResponsesShape, "/v1/messages": MessagesShape}

FAKE = web.AppKey("fake", "FakeLlama")


class FakeLlama:
    def __init__(self) -> None:
        self.loading = False
        self.total_slots = 4  # what /props reports
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most generation calls it answered at once
        self.cancelled = 0
        self.completed = 0
        self.record = True
        self.prompt_tokens = 0
        self.predicted_tokens = 0
        # What answers say of the prompt cache: the cached prompt tokens (anything, for
        # hostile tests), and whether in `usage.prompt_tokens_details` too (else only timings).
        self.cached_tokens: Any = 0
        self.cache_details = True
        # Every request as it arrived (body bytes, before any parsing) and the status answered:
        # what the hardening suite checks the gateway forwarded.
        self.received: list[tuple[str, bytes]] = []
        self.answered: list[int] = []
        # What `/props` says it serves: change it to stand for a model swapped behind a name.
        self.model_path = "/models/fake.gguf"
        # Generation calls answered so far: what a `unique` answer's text names.
        self.calls = 0
        # When set, `/props` answers this status and body instead (404 for a server without it).
        self.props_answer: tuple[int, bytes] | None = None
        self.props_reads = 0
        # `fail`: the status (0: drop the connection) of the next `failing` calls.
        self.failing = 0
        self.fail_status = 0
        self.reranking = True  # started with --reranking

    def fail(self, status: int, count: int) -> None:
        self.fail_status, self.failing = status, count

    def _failure(self, request: web.Request) -> web.Response | None:
        if self.failing <= 0:
            return None
        self.failing -= 1
        if self.fail_status == 0:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        message = "Loading model" if self.fail_status == 503 else "fake server failure"
        return _error(self.fail_status, message, "unavailable_error")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._witness])
        app[FAKE] = self
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/props", self.props)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        for path in _API_SHAPES:
            app.router.add_post(path, self.generate)
        app.router.add_post("/v1/embeddings", self.embeddings)
        for path in ("/v1/rerank", "/rerank", "/tokenize", "/detokenize"):
            app.router.add_post(path, self.utility)
        return app

    @web.middleware
    async def _witness(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Records each body received and the status answered (500 for a crash), if asked."""
        if not self.record or request.method == "GET":  # the prober's, not the gateway's relay
            return await handler(request)  # type: ignore[no-any-return]
        self.received.append((request.path, await request.read()))
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            self.answered.append(exc.status)
            raise
        except Exception:
            self.answered.append(500)
            raise
        self.answered.append(response.status)
        return response

    async def health(self, request: web.Request) -> web.Response:
        if self.loading:
            return _error(503, "Loading model", "unavailable_error")
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(fake_tokens.models_answer())

    async def props(self, request: web.Request) -> web.Response:
        self.props_reads += 1
        if self.props_answer is not None:
            status, body = self.props_answer
            return web.Response(status=status, body=body, content_type="application/json")
        return web.json_response(fake_answers.props_answer(self.model_path, self.total_slots))

    async def metrics(self, request: web.Request) -> web.Response:
        """A few of llama-server's own metrics (it serves them when started with --metrics)."""
        text = fake_answers.llama_metrics(self.prompt_tokens, self.predicted_tokens, self.in_flight)
        return web.Response(text=text, content_type="text/plain")

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self._note(request, body)
        failure = self._failure(request)
        if failure is not None:
            return failure
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
            for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)}
        return _json({"object": "list", "model": "fake", "data": data, "usage": usage})

    async def utility(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self._note(request, body)
        failure = self._failure(request)
        if failure is not None:
            return failure
        status, answer = fake_tokens.answer(request.path, body, self.reranking)
        return _json(answer, status)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self._note(request, body)
        opts: dict[str, Any] = body.get("fake") or {}
        if not isinstance(opts, dict):  # a client's own field of that name
            opts = {}
        if self.loading:
            return _error(503, "Loading model", "unavailable_error")
        failure = self._failure(request)
        if failure is not None:
            return failure
        if opts.get("status") and opts.get("plain"):  # as a proxy or a crash answers
            return web.Response(status=opts["status"], text="Internal Server Error")
        if opts.get("status"):
            return _error(opts["status"], "fake failure on request", "invalid_request_error")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.calls += 1
        cache = PromptCache(self.cached_tokens, self.cache_details)
        api = _API_SHAPES.get(request.path)
        shape: Any = (
            api(self.calls, opts)
            if api is not None
            else Shape(request.path == "/v1/completions", self.calls, opts, cache)
        )
        try:
            if opts.get("first_byte_delay"):
                await asyncio.sleep(opts["first_byte_delay"])
            if body.get("stream"):
                response = await self._stream(request, body, opts, shape)
            else:
                response = _json(shape.completion(body, opts.get("chunks", 3)))
            self.completed += 1
            self.prompt_tokens += PROMPT_TOKENS
            self.predicted_tokens += int(opts.get("chunks", 3))
            return response
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    def _note(self, request: web.Request, body: dict[str, Any]) -> None:
        if self.record:
            self.requests.append(body)
            self.headers.append(dict(request.headers))

    async def _stream(
        self, request: web.Request, body: dict[str, Any], opts: dict[str, Any], shape: Any
    ) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        chunks = int(opts.get("chunks", 3))
        delay = float(opts.get("delay", 0))
        usage_mode = opts.get("usage", "separate")
        include = (body.get("stream_options") or {}).get("include_usage") is True
        cache = getattr(shape, "cache", PromptCache())
        last = {"usage": cache.usage(chunks), "timings": cache.timings(chunks)}
        final = last if usage_mode == "in_final" else None
        own_end = getattr(shape, "own_end", False)
        for i, event in enumerate(_events(shape, body, opts, final)):
            if i == opts.get("drop_after"):
                assert request.transport is not None
                request.transport.abort()
                return out
            if i == opts.get("error_after"):
                await out.write(fake_answers.MID_STREAM_ERROR)
                return out
            if i == opts.get("hang_after"):
                await asyncio.sleep(3600)
            if delay:
                await asyncio.sleep(delay)
            await out.write(event)
        if not own_end:  # its last event ended the stream already
            if usage_mode == "always" or (usage_mode == "separate" and include):
                await out.write(sse({**chunk_base(), "choices": [], **last}))
            await out.write(b"data: [DONE]\n\n")
        if opts.get("linger_after_done"):  # the answer is over, the response not yet ended
            await asyncio.sleep(float(opts["linger_after_done"]))
        await out.write_eof()
        return out


def _events(
    shape: Any, body: dict[str, Any], opts: dict[str, Any], final_fields: Any
) -> list[bytes]:
    chunks, text = int(opts.get("chunks", 3)), opts.get("text", "tok{i} ")
    if getattr(shape, "own_end", False):  # the Responses and Messages APIs' shapes
        return list(shape.events(chunks, text, body.get("model", "fake")))
    return list(shape.events(chunks, final_fields, text))


def _json(value: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def _error(status: int, message: str, type_: str) -> web.Response:
    return _json({"error": {"code": status, "message": message, "type": type_}}, status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    fake = FakeLlama()
    fake.record = False
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
