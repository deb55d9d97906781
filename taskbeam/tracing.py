"""OpenTelemetry traces, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

With it set, the web traces its requests (Flask), the tasks it sends and the worker
runs them (Celery: the trace context travels in the message's headers), and both
trace their Redis commands (redis-py), the run's event appends among them: one
trace from ``POST /api/tasks`` to the task's last event. Spans go to the endpoint
over OTLP/HTTP (protobuf); the SDK reads its other ``OTEL_*`` variables itself
(``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``...).

Nothing of OpenTelemetry is imported while it is off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# Long-lived or every-few-seconds requests: a span each would say nothing.
EXCLUDED_URLS = "/socket.io/,/healthz,/readyz,/metrics"

_provider: Any = None


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def start(service_name: str, flask_app: Any = None) -> bool:
    """Export spans and instrument Celery and Redis (and ``flask_app``); False when off.

    Call it once per process that sends or runs tasks, after any fork: in a Celery
    prefork worker, in each child (``worker_process_init``).
    """
    global _provider
    if not enabled():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if _provider is None:
        name = os.environ.get(OTEL_SERVICE_NAME, "").strip() or service_name
        _provider = TracerProvider(resource=Resource.create({"service.name": name}))
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(_provider)
        CeleryInstrumentor().instrument(tracer_provider=_provider)
        RedisInstrumentor().instrument(tracer_provider=_provider)
    if flask_app is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(
            flask_app, tracer_provider=_provider, excluded_urls=EXCLUDED_URLS
        )
    return True


def flush(timeout_ms: int = 5_000) -> None:
    """Send the spans still buffered (before a process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def current_trace_id() -> str | None:
    """The trace id (32 hex digits) of the current span, when tracing is on."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
