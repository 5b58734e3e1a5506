"""The health probe of the upstreams: /health every `health_interval_seconds`, then for a
healthy one what it serves (`/props`, `/v1/models`: `gateway.identity`) and its slots."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from gateway.identity import upstream_identity
from gateway.upstreams import DOWN, HEALTHY, LOADING, Pool, Upstream

log = logging.getLogger("gateway.upstreams")


async def probe(session: aiohttp.ClientSession, upstream: Upstream, probe_timeout: float) -> None:
    try:
        async with session.get(
            upstream.health_url, timeout=aiohttp.ClientTimeout(total=probe_timeout)
        ) as resp:
            await resp.read()
            if resp.status == 200:
                if upstream.state != HEALTHY:  # back: it may serve another model file now
                    upstream.identity = None
                await _read_identity(session, upstream, probe_timeout)
                upstream.mark(HEALTHY)
            elif resp.status == 503:
                upstream.mark(LOADING, "health answered 503 (loading the model)")
            else:
                upstream.mark(DOWN, f"health answered {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        upstream.mark(DOWN, f"health probe failed: {exc.__class__.__name__} {exc}")


async def _read_identity(
    session: aiohttp.ClientSession, upstream: Upstream, probe_timeout: float
) -> None:
    """What a healthy upstream serves. A route it does not have (404: a server other than
    llama-server may lack `/props`) says nothing; any other failure keeps what it had, as an
    identity read from one answer of two would differ from the last and churn stored answers."""
    timeout = aiohttp.ClientTimeout(total=probe_timeout)
    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else None
    answers = []
    try:
        for url in (upstream.props_url, upstream.models_url):
            async with session.get(url, timeout=timeout, headers=headers) as resp:
                body = await resp.read()
            if resp.status not in (200, 404):
                log.debug("upstream %s answered %s to %s", upstream.url, resp.status, url.path)
                return
            answers.append(orjson.loads(body) if resp.status == 200 else None)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        log.debug("cannot read what upstream %s serves: %r", upstream.url, exc)
        return
    identity = upstream_identity(*answers)
    if identity is not None:
        upstream.identity = identity
    _read_slots(upstream, answers[0])
    upstream.vocab = _vocab(answers[1])


def _read_slots(upstream: Upstream, props: object) -> None:
    """The upstream's slots from `/props` `total_slots`, unless configured."""
    slots = props.get("total_slots") if isinstance(props, dict) else None
    if upstream.slots_configured or type(slots) is not int or slots < 1:
        return
    if slots != upstream.slots:
        log.info(
            "upstream %s has %d slots",
            upstream.url,
            slots,
            extra={"upstream": upstream.url, "model": upstream.model, "slots": slots},
        )
        upstream.set_slots(slots)


def _vocab(models: object) -> int | None:
    """`meta.n_vocab` of llama-server's /v1/models (its one model), if it says."""
    data = models.get("data") if isinstance(models, dict) else None
    entry = data[0] if isinstance(data, list) and data else None
    meta = entry.get("meta") if isinstance(entry, dict) else None
    size = meta.get("n_vocab") if isinstance(meta, dict) else None
    return size if type(size) is int and size > 0 else None


async def probe_forever(
    session: aiohttp.ClientSession, pool: Pool, interval: float, probe_timeout: float
) -> None:
    async def one(upstream: Upstream) -> None:
        await probe(session, upstream, probe_timeout)
        # At once: an upstream marked healthy is not picked under another's identity.
        pool.refresh_identities()

    while True:
        await asyncio.gather(*(one(u) for u in pool.upstreams))
        await asyncio.sleep(interval)
