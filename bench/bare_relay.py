"""The floor for any aiohttp gateway: a bare relay with no checks, policies or logs.

`python bench/bare_relay.py UPSTREAM_URL PORT`. The benchmark runs it beside the gateway so
the gateway's cost can be read against what aiohttp itself costs on this machine.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    url = UPSTREAM + request.path
    async with request.app[SESSION].post(
        url, data=body, headers={"Content-Type": "application/json"}
    ) as r:
        if r.content_type != "text/event-stream":
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)
        out = web.StreamResponse(status=r.status, headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        async for chunk in r.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as client:
        app[SESSION] = client
        yield


UPSTREAM = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:9000"

if __name__ == "__main__":
    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_get("/ready", health)
    web.run_app(
        app, port=int(sys.argv[2]), access_log=None, print=None, loop=uvloop.new_event_loop()
    )
