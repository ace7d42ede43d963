"""The image endpoint: ``POST /v1/images/generations`` (OpenAI's request, base64 PNG answers)."""

from __future__ import annotations

import base64
import io
import threading
import time
import warnings

import numpy as np
from edge_sdk.serving.errors import APIError
from edge_sdk.serving.hub import IMAGES, TEXT_TO_IMAGE, stop_when
from edge_sdk.serving.validation import json_body, number
from starlette.responses import JSONResponse

from edge_sdk.errors import EdgeSDKError, optional_import


async def image_generations(server, request):
    """OpenAI's /v1/images/generations: ``n`` images as base64 PNGs. A text-to-image model draws
    ``prompt`` (with ``negative_prompt``, ``guidance_scale``, ``steps``, ``seed``, ``scheduler`` as
    extensions); an unconditional model ignores the prompt."""
    started = time.perf_counter()
    body = await json_body(request)
    served = server.hub.get(body.get("model"), IMAGES)
    gen = served.runtime
    conditional = served.kind == TEXT_TO_IMAGE
    n = number(body, "n", 1, low=1, integer=True)
    if n > server.options.max_images:
        raise APIError(400, f"'n' is {n} but this server generates at most {server.options.max_images} images per "
                            "request (edge-sdk serve --max-images)", param="n")
    response_format = body.get("response_format") or "b64_json"
    if response_format != "b64_json":
        raise APIError(400, "'response_format' must be b64_json (this server keeps no files to link to)",
                       param="response_format")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise APIError(400, "'prompt' must be a string", param="prompt")
    common = dict(num_images=n, steps=number(body, "steps", None, low=1, integer=True),
                  seed=number(body, "seed", None, low=0, integer=True), scheduler=body.get("scheduler"))
    try:
        if conditional:
            if not prompt:
                raise APIError(400, "'prompt' is required: say what to draw", param="prompt")
            negative = body.get("negative_prompt")
            if negative is not None and not isinstance(negative, str):
                raise APIError(400, "'negative_prompt' must be a string", param="negative_prompt")
            width, height = _size(body.get("size"), gen.default_size)
            if width * height * n > server.options.max_pixels:
                raise APIError(400, f"'size' {width}x{height} times 'n' {n} is over this server's "
                                    f"{server.options.max_pixels} pixels per request", param="size")
            options = gen.options(prompt=prompt, negative_prompt=negative, width=width, height=height,
                                  guidance_scale=number(body, "guidance_scale", None, low=0), **common)
        else:
            size = body.get("size")
            height, width = gen.noise_shape(1)[2:]
            if size not in (None, "auto", f"{width}x{height}"):
                raise APIError(400, f"'size' must be {width}x{height}, the model's only size; got {size!r}", param="size")
            options = gen.options(**common)
    except EdgeSDKError as e:
        raise APIError(400, str(e)) from None
    cancelled = threading.Event()
    progress = stop_when(cancelled)

    def sample():
        try:
            with warnings.catch_warnings():  # a cut prompt or an ignored negative prompt: not an error for a client
                warnings.simplefilter("ignore")
                result = gen.generate(options, progress=progress)
        except EdgeSDKError as e:
            raise APIError(400, str(e)) from None
        return result, [{"b64_json": _png_base64(image)} for image in result.images]  # encoded here, off the loop

    result, data = await server.run_serial(served, sample, cancelled, started + server.options.request_timeout, request)
    server.metrics.images.labels(served.name).inc(n)
    info = {"model": served.name, "endpoint": "images", "images": n, "steps": result.stats.steps,
            "unconditional": not conditional}
    server.record(info, 200, started)
    return JSONResponse({"created": int(time.time()), "data": data}, headers={"x-edge-sdk-model": served.name})


def _size(size, default: tuple[int, int]) -> tuple[int, int]:
    """OpenAI's ``size`` ("512x512", or "auto" / absent: the model's own) -> (width, height)."""
    if size in (None, "auto"):
        return default[1], default[0]
    try:
        width, height = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        raise APIError(400, f"'size' must be WIDTHxHEIGHT in pixels (e.g. 512x512) or auto, got {size!r}",
                       param="size") from None
    return width, height


def _png_base64(image: np.ndarray) -> str:
    Image = optional_import("PIL.Image", "image", "answering with PNG images")
    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
