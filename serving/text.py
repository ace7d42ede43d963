"""The text endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions``, streamed or whole.

Their parameters, the cascade's judgement of a student's answer, server-sent events, and OpenAI's
response shapes (choices, logprobs, usage).

Each endpoint is a coroutine ``f(server, request)``; ``server`` is the ``Server`` (its hub, options,
metrics and bookkeeping)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse

from edge_sdk.errors import EdgeSDKError
from edge_sdk.serving.cascade import text_confidence
from edge_sdk.serving.engine import QueueFullError
from edge_sdk.serving.errors import APIError, Cancelled, internal_error, queue_full, timeout_error
from edge_sdk.serving.hub import TEXT, ServeOptions, Served, answer_headers
from edge_sdk.serving.validation import json_body, number


def _top_k(body: dict) -> int | None:
    value = number(body, "top_k", None, low=-1, integer=True)
    return 0 if value == -1 else value


@dataclass
class TextParams:
    options: Any  # GenerationOptions
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


def _text_params(body: dict, served: Served, limits: ServeOptions, chat: bool) -> TextParams:
    lm = served.runtime
    n = number(body, "n", 1, integer=True)
    if n != 1:
        raise APIError(400, f"'n' must be 1 (one choice per request), got {n}; send separate requests", param="n")
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "'best_of' is not supported; leave it unset", param="best_of")
    if body.get("echo"):
        raise APIError(400, "'echo' is not supported; leave it unset or false", param="echo")
    for key in ("presence_penalty", "frequency_penalty"):
        if number(body, key, 0) != 0:
            raise APIError(400, f"'{key}' is not supported; use 'repetition_penalty' (CTRL's rule) instead", param=key)
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    default_max = lm.defaults.max_new_tokens if chat else 16  # OpenAI's completions default
    max_tokens = number(body, key, default_max, low=1, integer=True)
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"'{key}' is {max_tokens} but this server allows at most {limits.max_tokens} "
                            "(edge-sdk serve --max-tokens)", param=key)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stop = tuple(stop)
    else:
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    if chat:
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise APIError(400, "'logprobs' must be true or false", param="logprobs")
        top = number(body, "top_logprobs", 0, low=0, high=20, integer=True)
        if top and not logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        top = number(body, "logprobs", None, low=0, high=5, integer=True)
        logprobs, top = top is not None, top or 0
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    include_usage = bool(stream_options.get("include_usage"))
    overrides = {
        "max_new_tokens": max_tokens,
        "temperature": number(body, "temperature", None, low=0, high=2),
        "top_p": number(body, "top_p", None, low=0, high=1, exclusive_low=True),
        "top_k": _top_k(body),  # vLLM's extension (-1 or 0 disables it)
        "repetition_penalty": number(body, "repetition_penalty", None, low=0, exclusive_low=True),
        "seed": number(body, "seed", None, low=0, integer=True),
        "ignore_eos": body.get("ignore_eos") if isinstance(body.get("ignore_eos"), bool) else None,
        "stop": stop,
    }
    try:
        options = lm.options(**overrides)
    except EdgeSDKError as e:
        raise APIError(400, str(e)) from None
    return TextParams(options, stream, include_usage, logprobs, top)


async def completions(server, request):
    """OpenAI's /v1/completions: one prompt's continuation."""
    body = await json_body(request)
    served = server.hub.get(body.get("model"), TEXT)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
    params = _text_params(body, served, server.options, chat=False)
    encode = _encoder(lambda lm: lm._encode(prompt), "prompt")
    return await _text(server, request, served, encode, params, chat=False, content=prompt)


async def chat_completions(server, request):
    """OpenAI's /v1/chat/completions: the reply to ``messages`` under the package's chat template."""
    body = await json_body(request)
    served = server.hub.get(body.get("model"), TEXT)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise APIError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    for message in messages:  # content parts: the text ones, joined (images and audio are not supported)
        if isinstance(message.get("content"), list):
            parts = message["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
                raise APIError(400, "message content parts must be text parts ({\"type\": \"text\", \"text\": ...})",
                               param="messages")
            message["content"] = "".join(p["text"] for p in parts)
    params = _text_params(body, served, server.options, chat=True)
    encode = _encoder(lambda lm: lm._chat_ids(messages, None), "messages")
    return await _text(server, request, served, encode, params, chat=True, content=messages)


async def _text(server, request, served: Served, encode, params: TextParams, chat: bool, content):
    """Submit the request (to the student, then its teacher when the student is unsure) and answer
    it whole or as a stream."""
    param = "messages" if chat else "prompt"
    started = time.perf_counter()
    info = {"model": served.name, "endpoint": "chat" if chat else "completions", "stream": params.stream}
    if server.options.log_content:
        info["prompt"] = content
    deadline = started + server.options.request_timeout
    answering, escalated, confidence = served, False, None
    needs_scores = params.logprobs or served.fallback is not None
    loop = asyncio.get_running_loop()
    ids = await loop.run_in_executor(None, encode, served.runtime)  # chat templates and tokenizers off the loop
    first = await _submit(server, served, ids, params, scores=needs_scores, param=param)
    if served.fallback is not None:
        teacher = server.hub.models[served.fallback.teacher]
        judged = server.options.cascade_tokens if params.stream else None
        await first.wait(judged, deadline, request)
        req = first.request
        considered = len(req.logprobs) if judged is None else min(judged, len(req.logprobs))
        confidence = text_confidence(req.logprobs[:considered], req.entropies[:considered], server.options.measure)
        if server.escalates(served, confidence):
            req.cancel()
            escalated, answering = True, teacher
            first = await _submit(server, teacher, await loop.run_in_executor(None, encode, teacher.runtime), params,
                                  scores=params.logprobs, param=param)
    info.update(answered_by=answering.name, escalated=escalated, confidence=confidence)
    headers = answer_headers(served, answering, escalated, confidence)
    if params.stream:
        return _stream(server, request, first, answering, params, chat, headers, info, started, deadline)
    await first.wait(None, deadline, request)
    req = first.request
    _text_metrics(server, answering, req)
    body = _text_body(answering, req, params, chat)
    info.update(_text_info(req))
    if server.options.log_content:
        info["output"] = req.text
    server.record(info, 200, started)
    return JSONResponse(body, headers=headers)


async def _submit(server, served: Served, ids: list[int], params: TextParams, scores: bool, param: str) -> "_Pending":
    pending = _Pending(asyncio.get_running_loop())
    try:
        pending.request = served.engine.submit(ids, params.options, scores=scores, top_logprobs=params.top_logprobs,
                                               on_event=pending.on_event)
    except QueueFullError as e:
        raise queue_full(str(e), server.retry_after(served)) from None
    except EdgeSDKError as e:
        code = "context_length_exceeded" if "context" in str(e) else None
        raise APIError(400, str(e), param=param if code else None, code=code) from None
    return pending


def _stream(server, request, pending: "_Pending", served: Served, params: TextParams, chat: bool, headers: dict,
            info: dict, started: float, deadline: float):
    lm = served.runtime
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict, usage=None) -> str:
        data = {"id": ident, "object": obj, "created": created, "model": served.name,
                "choices": [choice] if choice is not None else []}
        if usage is not None or (params.include_usage and choice is not None):
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def events():
        status = 499  # the client left before the end (nginx's convention)
        req = pending.request
        try:
            if chat:
                yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None})
            offset = 0
            async for piece, entries, finished in pending.events(deadline):
                logprobs = None
                if params.logprobs:
                    logprobs = _chat_logprobs(lm, entries) if chat else _completion_logprobs(lm, entries, offset)
                offset += len(piece)
                reason = _finish_reason(req.finish_reason) if finished else None
                if piece or entries or finished:  # a chunk per token, as llama-server and OpenAI send them
                    if chat:
                        yield chunk({"index": 0, "delta": {"content": piece}, "logprobs": logprobs, "finish_reason": reason})
                    else:
                        yield chunk({"text": piece, "index": 0, "logprobs": logprobs, "finish_reason": reason})
            if req.error is not None:
                status = 500
                yield f"data: {json.dumps(internal_error().body())}\n\n"
            else:
                status = 200
                _text_metrics(server, served, req)
                if params.include_usage:
                    yield chunk(None, _usage(req))
            yield "data: [DONE]\n\n"
        except (TimeoutError, asyncio.TimeoutError):
            status = 408
            yield f"data: {json.dumps(timeout_error(server.options.request_timeout).body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            req.cancel()
            info.update(_text_info(req))
            if server.options.log_content:
                info["output"] = req.text
            server.record(info, status, started)

    response = _Stream(events(), media_type="text/event-stream",
                       headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.on_close = pending.request.cancel
    return response


def _text_metrics(server, served: Served, req) -> None:
    m, name = server.metrics, served.name
    m.prompt_tokens.labels(name).inc(len(req.prompt_ids))
    m.generation_tokens.labels(name).inc(len(req.token_ids))
    if req.first_token is not None:
        m.ttft.labels(name).observe(req.first_token - req.submitted)
        if len(req.token_ids) > 1 and req.finished:
            m.itl.labels(name).observe((req.finished - req.first_token) / (len(req.token_ids) - 1))


def _text_info(req) -> dict:
    return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.token_ids),
            "queued_s": round(req.queued_seconds, 4), "finish_reason": req.finish_reason,
            "ttft_s": round(req.first_token - req.submitted, 4) if req.first_token else None}


class _Pending:
    """A submitted text request seen from the event loop: its events arrive through a queue."""

    def __init__(self, loop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request = None
        self._buffer: list = []  # events taken by wait() and not yet streamed
        self._checked = time.perf_counter()  # when wait() last asked whether the client is still there

    def on_event(self, request, piece, entries, finished):  # engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (piece, entries, finished))

    async def wait(self, tokens: int | None, deadline: float, request) -> None:
        """Until the request is done, or (``tokens``) has at least that many tokens; keeps the events.
        A timeout, a client that left or a cancelled handler cancels the request."""
        try:
            await self._wait(tokens, deadline, request)
        except BaseException:
            self.request.cancel()
            raise

    async def _wait(self, tokens: int | None, deadline: float, request) -> None:
        while True:
            if self._buffer and self._buffer[-1][2]:
                return
            if tokens is not None and len(self.request.token_ids) >= tokens:
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError()
            try:
                self._buffer.append(await asyncio.wait_for(self.queue.get(), timeout=min(remaining, 0.5)))
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                pass
            if time.perf_counter() - self._checked >= 0.5:  # a client that left stops its generation
                self._checked = time.perf_counter()
                if await request.is_disconnected():
                    raise Cancelled()

    async def events(self, deadline: float):
        while self._buffer:
            event = self._buffer.pop(0)
            yield event
            if event[2]:
                return
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError()
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout=remaining)
            except asyncio.TimeoutError:  # the built-in TimeoutError from Python 3.11 on, not before
                raise TimeoutError() from None
            yield event
            if event[2]:
                return


class _Stream(StreamingResponse):
    """Server-sent events whose generator is closed however the response ends (a client that left
    included), and ``on_close`` called, so the request it streams is cancelled and logged at once."""

    on_close = None  # called however the response ends, even before the body started

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            if self.on_close is not None:
                self.on_close()


def _encoder(function, param: str):
    def encode(lm):
        try:
            return function(lm)
        except EdgeSDKError as e:
            code = "context_length_exceeded" if "context" in str(e) else None
            raise APIError(400, str(e), param=param, code=code) from None

    return encode


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"  # OpenAI's two (eos and stop strings are both "stop")


def _usage(req) -> dict:
    return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.token_ids),
            "total_tokens": len(req.prompt_ids) + len(req.token_ids)}


def _token_text(lm, token: int) -> str:
    return lm.tokenizer.decode([token])


def _completion_logprobs(lm, entries, offset: int) -> dict:
    tokens, logprobs, tops, offsets = [], [], [], []
    for token, logprob, top in entries:
        text = _token_text(lm, token)
        tokens.append(text)
        logprobs.append(logprob)
        tops.append({_token_text(lm, t): lp for t, lp in top} if top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(lm, entries) -> dict:
    def entry(token, logprob):
        text = _token_text(lm, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top]}
                        for token, logprob, top in entries]}


def _text_body(served: Served, req, params: TextParams, chat: bool) -> dict:
    entries = list(zip(req.token_ids, req.logprobs, req.top)) if params.logprobs else []
    reason = _finish_reason(req.finish_reason)
    if req.error is not None:
        raise internal_error()
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": req.text},
                  "logprobs": _chat_logprobs(served.runtime, entries) if params.logprobs else None, "finish_reason": reason}
        ident, obj = "chatcmpl-" + uuid.uuid4().hex, "chat.completion"
    else:
        choice = {"text": req.text, "index": 0,
                  "logprobs": _completion_logprobs(served.runtime, entries, 0) if params.logprobs else None,
                  "finish_reason": reason}
        ident, obj = "cmpl-" + uuid.uuid4().hex, "text_completion"
    return {"id": ident, "object": obj, "created": int(time.time()), "model": served.name, "choices": [choice],
            "usage": _usage(req)}
