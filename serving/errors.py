"""The server's errors: OpenAI's error object, and every failure mapped onto one (never a traceback)."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect

from edge_sdk.errors import EdgeSDKError


class APIError(Exception):
    """An error answered as OpenAI's error object (``{"error": {"message", "type", "param", "code"}}``)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """Work abandoned because its client left or its time ran out."""


def internal_error() -> APIError:
    return APIError(500, "the model failed on this request; the server logged the error", "server_error")


def timeout_error(seconds: float | None = None) -> APIError:
    limit = f"longer than {seconds:g} s" if seconds is not None else "longer than the server allows"
    return APIError(408, f"the request took {limit} (edge-sdk serve --request-timeout)", "timeout_error",
                    code="request_timeout")


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes (edge-sdk serve --max-body-bytes)",
                    code="request_too_large")


def queue_full(message: str, retry_after: int) -> APIError:
    return APIError(429, message, "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


def as_api_error(e: BaseException) -> APIError:
    """What the client is told about ``e``."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return timeout_error()
    if isinstance(e, (Cancelled, ClientDisconnect)):
        return APIError(499, "the client closed the request", code="client_closed_request")
    if isinstance(e, EdgeSDKError):
        return APIError(400, str(e))
    return internal_error()


async def send_error(send, error: APIError) -> None:
    """Answer ``error`` on a raw ASGI ``send`` (middleware, before any route ran)."""
    body = json.dumps(error.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
