"""Optional OpenTelemetry tracing: one span per request, exported over OTLP/HTTP.

Off by default (`tracing.enabled: false`): then nothing here is imported and a request
pays one `is None` check. On, a request's span continues the caller's trace (W3C
`traceparent`), is named after the endpoint, carries model, tier, upstream, status,
token counts and the attempts made upstream, and its own `traceparent` goes to
llama-server so the upstream call joins the trace. Needs the `otel` extra:
`pip install 'llama-gateway[otel]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.config import TracingConfig
from gateway.context import UPSTREAM_ERROR, RequestContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

SPAN_KEY = "tracing.span"


class Tracing:
    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        # Imported here: only a gateway with tracing on needs OpenTelemetry installed (the
        # configuration check makes sure it is).
        from opentelemetry.propagate import extract, inject
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint)
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("llama-gateway")
        self._extract, self._inject, self._in_context = extract, inject, set_span_in_context
        self._server, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR

    def start(self, ctx: RequestContext) -> None:
        parent = self._extract(ctx.request.headers)
        span = self.tracer.start_span(
            ctx.endpoint,
            context=parent,
            kind=self._server,
            attributes={"http.request.method": ctx.request.method, "url.path": ctx.request.path},
        )
        ctx.state[SPAN_KEY] = span

    def upstream_headers(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        """Put this request's span in the headers sent to llama-server."""
        span = ctx.state.get(SPAN_KEY)
        if span is not None:
            self._inject(headers, context=self._in_context(span))

    def finish(self, ctx: RequestContext) -> None:
        span: Span | None = ctx.state.pop(SPAN_KEY, None)
        if span is None:
            return
        attributes: dict[str, Any] = {
            "http.response.status_code": ctx.status,
            "llama_gateway.outcome": ctx.outcome,
            "llama_gateway.stream": ctx.stream,
            "llama_gateway.attempts": ctx.attempts,
        }
        optional = {
            "gen_ai.request.model": ctx.model,
            "llama_gateway.tier": ctx.tier,
            "llama_gateway.upstream": ctx.upstream,
            "llama_gateway.request_id": ctx.request_id,
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        usage = ctx.usage or {}
        for key, name in (("prompt_tokens", "input"), ("completion_tokens", "output")):
            if isinstance(usage.get(key), int):
                attributes[f"gen_ai.usage.{name}_tokens"] = usage[key]
        span.set_attributes(attributes)
        if ctx.status >= 500 or (ctx.outcome == UPSTREAM_ERROR and ctx.status < 400):
            # A 4xx, the gateway's or the upstream's, is the caller's error; an error event
            # in a stream that began with 200 is the server's.
            span.set_status(self._status(self._error, ctx.error or ctx.outcome))
        span.end()

    def close(self) -> None:
        self.provider.shutdown()
