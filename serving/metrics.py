"""The server's Prometheus metrics (``prometheus_client``), in the naming style of vLLM's and
llama.cpp's servers: ``edge_sdk_`` prefix, base units (seconds), ``_total`` counters, labels
``model``, ``endpoint`` and ``status``.

The student's confidence histogram is the drift signal: a cascade's threshold was calibrated on
some inputs, and when the live distribution of confidence moves, so does the share escalated.
"""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)
CONFIDENCE_BUCKETS = (-5.0, -4.0, -3.0, -2.5, -2.0, -1.5, -1.25, -1.0, -0.75, -0.5, -0.25, -0.1, 0.0)


class Metrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("edge_sdk_requests", "HTTP requests answered, by status code.",
                                ["model", "endpoint", "status"], registry=r)
        self.duration = Histogram("edge_sdk_request_duration_seconds", "Time from request to the last byte of the answer.",
                                  ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("edge_sdk_time_to_first_token_seconds", "Time from request to the first generated token.",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("edge_sdk_inter_token_latency_seconds", "Mean time between generated tokens, per request.",
                             ["model"], buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("edge_sdk_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.generation_tokens = Counter("edge_sdk_generation_tokens", "Tokens generated.", ["model"], registry=r)
        self.audio_seconds = Counter("edge_sdk_audio_seconds", "Seconds of audio transcribed.", ["model"], registry=r)
        self.images = Counter("edge_sdk_images_generated", "Images generated.", ["model"], registry=r)
        self.running = Gauge("edge_sdk_requests_running", "Requests being computed (text: rows of the running batch).",
                             ["model"], registry=r)
        self.queued = Gauge("edge_sdk_requests_queued", "Requests waiting for a row or a worker.", ["model"], registry=r)
        self.escalations = Counter("edge_sdk_cascade_escalations", "Requests the student handed to its teacher.",
                                   ["model", "teacher"], registry=r)
        self.confidence = Histogram("edge_sdk_cascade_confidence", "The student's confidence in its answers "
                                    "(text: the --confidence measure; speech: average log-probability).",
                                    ["model"], buckets=CONFIDENCE_BUCKETS, registry=r)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
