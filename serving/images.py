"""The image endpoint: ``POST /v1/images/generations`` (OpenAI's request, base64 PNG answers)."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
from starlette.responses import JSONResponse

from edge_sdk.errors import EdgeSDKError, optional_import
from edge_sdk.serving.errors import APIError
from edge_sdk.serving.hub import IMAGE, stop_when
from edge_sdk.serving.validation import json_body, number


async def image_generations(server, request):
    """OpenAI's /v1/images/generations: ``n`` images as base64 PNGs (unconditional packages: the prompt is not used)."""
    started = time.perf_counter()
    body = await json_body(request)
    served = server.hub.get(body.get("model"), IMAGE)
    gen = served.runtime
    n = number(body, "n", 1, low=1, integer=True)
    if n > server.options.max_images:
        raise APIError(400, f"'n' is {n} but this server generates at most {server.options.max_images} images per "
                            "request (edge-sdk serve --max-images)", param="n")
    response_format = body.get("response_format") or "b64_json"
    if response_format != "b64_json":
        raise APIError(400, "'response_format' must be b64_json (this server keeps no files to link to)",
                       param="response_format")
    size = body.get("size")
    height, width = gen.noise_shape(1)[2:]
    if size not in (None, "auto", f"{width}x{height}"):
        raise APIError(400, f"'size' must be {width}x{height}, the model's only size; got {size!r}", param="size")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise APIError(400, "'prompt' must be a string", param="prompt")
    try:
        options = gen.options(num_images=n, steps=number(body, "steps", None, low=1, integer=True),
                              seed=number(body, "seed", None, low=0, integer=True), scheduler=body.get("scheduler"))
    except EdgeSDKError as e:
        raise APIError(400, str(e)) from None
    cancelled = threading.Event()
    progress = stop_when(cancelled)

    def sample():
        try:
            result = gen.generate(options, progress=progress)
        except EdgeSDKError as e:
            raise APIError(400, str(e)) from None
        return result, [{"b64_json": _png_base64(image)} for image in result.images]  # encoded here, off the loop

    result, data = await server.run_serial(served, sample, cancelled, started + server.options.request_timeout, request)
    server.metrics.images.labels(served.name).inc(n)
    info = {"model": served.name, "endpoint": "images", "images": n, "steps": result.stats.steps,
            "unconditional": True}
    server.record(info, 200, started)
    return JSONResponse({"created": int(time.time()), "data": data}, headers={"x-edge-sdk-model": served.name})


def _png_base64(image: np.ndarray) -> str:
    Image = optional_import("PIL.Image", "image", "answering with PNG images")
    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
