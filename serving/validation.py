"""Request validation and limits: JSON and form fields checked one by one, and the API-key and body-size middleware."""

from __future__ import annotations

import hmac
import json
import logging
import math
import time

from edge_sdk.serving.errors import APIError, as_api_error, send_error, too_large

log = logging.getLogger("edge_sdk.serving")

# request paths -> the endpoint label of the metrics and the request log
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/audio/transcriptions": "transcriptions",
             "/v1/images/generations": "images", "/v1/models": "models", "/health": "health", "/metrics": "metrics"}


def number(body: dict, key: str, default, low=None, high=None, integer=False, exclusive_low=False):
    """``body[key]`` as a finite number within the bounds, or ``default`` when absent."""
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, float) and not math.isfinite(value)):
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}", param=key)
    if low is not None and (value <= low if exclusive_low else value < low):
        raise APIError(400, f"'{key}' must be {'>' if exclusive_low else '>='} {low}, got {value}", param=key)
    if high is not None and value > high:
        raise APIError(400, f"'{key}' must be <= {high}, got {value}", param=key)
    return value


async def json_body(request) -> dict:
    """The request's body as a JSON object."""
    raw = await request.body()
    if not raw:
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def form_text(form, key: str) -> str | None:
    """A multipart form's text field (None when absent)."""
    value = form.get(key)
    if value is None or isinstance(value, str):
        return value
    raise APIError(400, f"'{key}' must be a text field", param=key)


def form_number(form, key: str, low: float, high: float) -> float | None:
    """A number sent as a form field (multipart bodies carry text), or None when absent or empty."""
    text = form_text(form, key)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise APIError(400, f"'{key}' must be a number, got {text!r}", param=key) from None
    if not low <= value <= high:
        raise APIError(400, f"'{key}' must be in [{low}, {high}], got {text}", param=key)
    return value


class Guard:
    """ASGI middleware around every request: the API key (compared in constant time), the body size
    limit, and errors as OpenAI's error object (never a traceback). ``record(info, status, started)``
    counts and logs a refused request."""

    def __init__(self, app, options, record):
        self.app, self.options, self.record = app, options, record  # options: the server's ServeOptions
        self._key = options.api_key.encode("utf-8") if options.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        response_started = False

        async def tracked_send(message):
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            self._authorize(path, headers)
            limit = self.options.max_body_bytes
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise too_large(limit)
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise too_large(limit)
                return message

            await self.app(scope, limited_receive, tracked_send)
        except Exception as e:
            error = as_api_error(e)
            if error.status >= 500:
                log.exception("request failed: %s %s", scope.get("method"), path)
            if response_started:
                return  # a stream already under way: nothing more can be said
            self.record({"model": "", "endpoint": ENDPOINTS.get(path, "other"), "error": error.message}, error.status, started)
            await send_error(send, error)

    def _authorize(self, path: str, headers: dict) -> None:
        if self._key is None or path == "/health":
            return
        supplied = headers.get("authorization", "").encode("latin-1")  # the header's own bytes back
        token = supplied[7:].strip() if supplied[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(token, self._key):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                           code="invalid_api_key")
