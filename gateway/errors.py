"""One error type for everything the gateway refuses, rendered in OpenAI's shape unless the
endpoint's API has its own (`gateway.dialects`)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web
from multidict import CIMultiDict


class GatewayError(Exception):
    """An answer the gateway gives instead of the upstream's.

    `type` and `code` follow OpenAI's vocabulary (`invalid_request_error`,
    `model_not_found`, ...), so SDK clients raise the exception they expect.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return orjson.dumps({"error": self.as_dict()})

    def as_dict(self) -> dict[str, str | None]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def response(
        self, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> web.Response:
        """This error as the answer: its status, body (OpenAI's shape unless another API's
        is given, `gateway.dialects`) and headers, then `headers`. Until it is sent, its
        headers may still change (the policies' `on_response`)."""
        merged = CIMultiDict(self.headers)
        if headers:
            merged.update(headers)
        merged.setdefault("Content-Type", "application/json")
        return web.Response(status=self.status, body=body or self.body(), headers=merged)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def upstream_unavailable(message: str) -> GatewayError:
    return GatewayError(
        503, message, type="server_error", code="upstream_unavailable", headers={"Retry-After": "1"}
    )


def upstream_failed(message: str, status: int = 502) -> GatewayError:
    return GatewayError(status, message, type="server_error", code="upstream_error")


def internal_error(request_id: str | None, status: int = 500) -> GatewayError:
    """A failure of the gateway's own; the request ID lets an operator find its traceback."""
    report = f"request ID {request_id}" if request_id else "time of the failure"
    return GatewayError(
        status,
        f"The gateway failed while handling this request; retry, and report the {report} to"
        " the operator if it persists.",
        type="server_error",
        code="internal_error",
    )
