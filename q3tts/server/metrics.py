"""Prometheus metrics (one registry per app) and the ASGI middleware that counts requests and
caps request bodies."""

from __future__ import annotations

import json
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """`stats()`: {model name: its scheduler's stats()} of the loaded models (or None before any).
    Totals keep their unlabelled names; `q3tts_model_*` series carry a `model` label."""

    def __init__(self, stats: Callable[[], Optional[dict]]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("q3tts_requests", "HTTP requests by route and status", ["route", "method", "status"],
                                registry=r)  # fmt: skip
        self.errors = Counter("q3tts_errors", "Requests that ended in an error, by kind", ["kind"], registry=r)
        self.ttfa = Histogram("q3tts_time_to_first_audio_seconds", "From request to the first audio chunk",
                              buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.rtf = Histogram("q3tts_real_time_factor", "Generation wall time / audio duration (below 1: faster "
                             "than real time)", buckets=RTF_BUCKETS, registry=r)  # fmt: skip
        self.audio_seconds = Counter("q3tts_audio_seconds", "Seconds of audio generated", registry=r)
        self.queue_wait = Histogram("q3tts_queue_wait_seconds", "From submit to joining a batch, by model", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.model_requests = Counter("q3tts_model_requests", "Speech requests generated, by model", ["model"],
                                      registry=r)  # fmt: skip
        self.model_ttfa = Histogram("q3tts_model_time_to_first_audio_seconds", "Time to first audio, by model",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.model_audio_seconds = Counter("q3tts_model_audio_seconds", "Seconds of audio generated, by model",
                                           ["model"], registry=r)  # fmt: skip
        r.register(_SchedulerCollector(stats))

    def observe_job(self, ttfa: Optional[float], audio_seconds: float, wall_seconds: float, model: str = "default",
                    queue_seconds: Optional[float] = None) -> None:  # fmt: skip
        self.model_requests.labels(model).inc()
        if queue_seconds is not None:
            self.queue_wait.labels(model).observe(queue_seconds)
        if ttfa is not None:
            self.ttfa.observe(ttfa)
            self.model_ttfa.labels(model).observe(ttfa)
        if audio_seconds > 0:
            self.audio_seconds.inc(audio_seconds)
            self.model_audio_seconds.labels(model).inc(audio_seconds)
            self.rtf.observe(wall_seconds / audio_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector:
    """Reads the scheduler's live numbers at scrape time."""

    def __init__(self, stats: Callable[[], Optional[dict]]):
        self.stats = stats

    def collect(self):
        per_model = self.stats() or {}
        series = (("active_requests", "active", "Requests generating now"),
                  ("queue_depth", "queued", "Requests waiting for a batch slot"),
                  ("max_batch", "max_batch", "Batch slots"))  # fmt: skip
        for name, key, help in series:
            yield GaugeMetricFamily(f"q3tts_{name}", help, value=sum(s.get(key, 0) for s in per_model.values()))
            labelled = GaugeMetricFamily(f"q3tts_model_{name}", f"{help}, by loaded model", labels=["model"])
            for model, s in per_model.items():
                labelled.add_metric([model], s.get(key, 0))
            yield labelled
        # A model's scheduler counts from its load: an unload is a counter reset, as rate() expects.
        yield CounterMetricFamily("q3tts_frames_generated", "Codec frames generated (12.5 per second of audio)",
                                  value=sum(s.get("frames_generated", 0) for s in per_model.values()))  # fmt: skip
        loaded = GaugeMetricFamily("q3tts_model_loaded", "1 for each loaded model", labels=["model"])
        for model in per_model:
            loaded.add_metric([model], 1)
        yield loaded


class BodyTooLarge(Exception):
    pass


class RequestMiddleware:
    """Counts every HTTP request by route template and status, and refuses bodies over `max_body`
    bytes (413) whether or not they declare a Content-Length."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send)
            self._count(scope, 413)
            return
        received = 0
        state = {"started": False, "too_large": False, "body_done": False}

        def count(message) -> None:
            nonlocal received
            if message["type"] != "http.request":
                state["body_done"] = True
                return
            received += len(message.get("body", b""))
            state["body_done"] = not message.get("more_body", False)
            if received > self.max_body:
                state["too_large"] = True

        async def limited_receive():
            if state["too_large"]:
                return {"type": "http.disconnect"}
            message = await receive()
            count(message)
            if state["too_large"]:
                raise BodyTooLarge(f"the request body is over {self.max_body} bytes")
            return message

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                # An error before the body was read (a form parser refusing its first bytes): read
                # on, to say 413 rather than 400 if the body was too large anyway.
                while not state["body_done"] and not state["too_large"]:
                    count(await receive())
            if state["too_large"] and not state["started"]:
                return  # the 413 below replaces whatever the route made of the cut body
            if message["type"] == "http.response.start":
                state["started"] = True
                status["code"] = message["status"]
            await send(message)

        try:
            try:
                await self.app(scope, limited_receive, counting_send)
            except Exception:
                if not state["too_large"]:
                    raise
            if state["too_large"] and not state["started"]:
                status["code"] = 413
                await self._too_large(send)
        finally:
            self._count(scope, status["code"])

    def _count(self, scope, status: int) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        self.metrics.requests.labels(label, scope.get("method", ""), str(status)).inc()
        if status >= 400:
            self.metrics.errors.labels(str(status)).inc()

    async def _too_large(self, send) -> None:
        error = {"message": f"the request body is over {self.max_body} bytes", "type": "request_too_large",
                 "param": None, "code": "body_too_large"}  # fmt: skip
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
