"""Settings read once from the environment and validated at start-up.

Every variable is documented in ``.env.example``. A bad value stops the process
with one clear line instead of failing later on the first request or task.
Run ``python -m taskbeam.config`` to check the current environment. The secrets
and the identity settings are read and checked in :mod:`taskbeam.credentials`.
"""

import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import credentials, sentinel
from .envvars import ConfigError, env_bool, env_int
from .store.keys import Keys


def _names(env, name, default):
    raw = env.get(name, "").strip()
    names = tuple(n.strip() for n in raw.split(",") if n.strip()) if raw else default
    for n in names:
        if not n.replace("_", "").isalnum():
            raise ConfigError(f"{name}: {n!r} is not a plain column/table name")
    return names


def _origins(env):
    origins = []
    for item in env.get("ALLOWED_ORIGINS", "").split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(f"ALLOWED_ORIGINS entry {item!r} must be scheme://host[:port]")
        origins.append(item)
    return tuple(origins)


def _hosts(env, origins):
    """ALLOWED_HOSTS (host names, lower-cased; ``*`` for any) plus the hosts of ALLOWED_ORIGINS."""
    hosts = []
    for item in env.get("ALLOWED_HOSTS", "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item != "*" and not item.replace("-", "").replace(".", "").isalnum():
            raise ConfigError(
                f"ALLOWED_HOSTS entry {item!r} must be a host name (no scheme, no port) or *"
            )
        hosts.append(item)
    for origin in origins:
        name = urlsplit(origin).hostname
        if name and name not in hosts:
            hosts.append(name)
    return tuple(hosts)


@dataclass(frozen=True)
class Settings:
    redis_url: str
    secret_key: str | None
    namespace: str
    allowed_origins: tuple
    allowed_hosts: tuple
    session_cookie_secure: bool
    progress_coalesce_ms: int
    event_log_maxlen: int
    task_retention_s: int
    task_time_limit_s: int
    max_redeliveries: int
    rate_limit_per_minute: int
    max_active_tasks: int
    rate_limit_per_ip_per_minute: int
    database_url: str
    export_dir: str
    export_ttl_s: int
    export_table: str
    export_columns: tuple
    export_date_column: str
    export_statement_timeout_s: int
    auth: credentials.AuthSettings = credentials.AuthSettings()
    # Sentinel mode: an event is published once this many replicas have it (WAIT).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1000
    redis_tls_ca_file: str = ""  # "": the system's CAs (TLS URLs only)
    # The team's own job modules (docs/jobs.md): imported by web and worker at start-up.
    jobs_modules: tuple = ("jobs",)
    # What one client may accumulate (taskbeam/quotas.py, issue 32).
    anonymous_task_retention_s: int = 3_600
    max_active_tasks_per_ip: int = 30
    max_workflow_children: int = 1_000
    redis_memory_high_water_pct: int = 80
    export_quota_bytes: int = 0  # 0: half the exports volume's size
    export_quota_per_owner_bytes: int = 1 << 30
    export_quota_per_ip_bytes: int = 2 << 30
    export_min_free_pct: int = 10
    # Per Socket.IO connection (taskbeam/web/sockets.py).
    subscribe_rate_per_s: int = 20
    subscribe_replay_bytes_per_s: int = 1 << 20
    # Our code below a library's API, each switchable back to the library's own path.
    web_fast_transport: bool = True  # taskbeam/web/fastws
    broker_transport_fix: bool = True  # taskbeam/broker_transport.py
    # Observability (taskbeam/observability.py, taskbeam/tracing.py).
    log_format: str = "text"
    otel_endpoint: str = ""  # "": no traces
    # New Socket.IO connections one web process admits a second (fastws.admission).
    web_connects_per_s: int = 500
    # engine.io's heartbeat: a client that hears nothing for interval + timeout
    # (a web node lost without a FIN) closes and reconnects.
    web_ping_interval_s: int = 7
    web_ping_timeout_s: int = 7

    @property
    def socketio_channel(self):
        # Pub/Sub channels ignore the Redis DB number: name ours per deployment.
        return Keys(self.namespace).socketio_channel


def load(env=None, *, need_secret=True):
    """Read and validate settings; ``need_secret`` is False for the worker."""
    env = credentials.with_secret_files(os.environ if env is None else env)
    namespace = env.get("TASKBEAM_NAMESPACE", "taskbeam").strip()
    if not namespace.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("TASKBEAM_NAMESPACE may hold only letters, digits, '-' and '_'")
    origins = _origins(env)
    redis_url = credentials.redis_url(env)
    auth = credentials.auth_settings(env) if need_secret else credentials.AuthSettings()
    if auth.dev_login and (
        env_bool(env, "SESSION_COOKIE_SECURE") or any(o.startswith("https:") for o in origins)
    ):
        # Behind TLS is where real users are; the dev login mints a token for any name.
        raise ConfigError(
            "AUTH_DEV_LOGIN=1 lets anyone sign in as anyone: it is for a local demo, not "
            "with https ALLOWED_ORIGINS or SESSION_COOKIE_SECURE=1"
        )
    return Settings(
        redis_url=redis_url,
        secret_key=credentials.secret_key(env) if need_secret else None,
        namespace=namespace,
        allowed_origins=origins,
        allowed_hosts=_hosts(env, origins),
        session_cookie_secure=env_bool(env, "SESSION_COOKIE_SECURE"),
        progress_coalesce_ms=env_int(env, "PROGRESS_COALESCE_MS", 100, 0, 60_000),
        event_log_maxlen=env_int(env, "EVENT_LOG_MAXLEN", 10_000, 100, 1_000_000),
        task_retention_s=env_int(env, "TASK_RETENTION_S", 604_800, 60, 90 * 86_400),
        task_time_limit_s=env_int(env, "TASK_TIME_LIMIT_S", 3_600, 10, 7 * 86_400),
        max_redeliveries=env_int(env, "TASK_MAX_REDELIVERIES", 3, 0, 100),
        rate_limit_per_minute=env_int(env, "RATE_LIMIT_PER_MINUTE", 120, 60, 100_000),
        max_active_tasks=env_int(env, "MAX_ACTIVE_TASKS", 10, 1, 100_000),
        rate_limit_per_ip_per_minute=env_int(
            env, "RATE_LIMIT_PER_IP_PER_MINUTE", 600, 60, 1_000_000
        ),
        database_url=_database_url(env),
        export_dir=env.get("EXPORT_DIR", "").strip() or "/data/exports",
        export_ttl_s=env_int(env, "EXPORT_TTL", 86_400, 10, 30 * 86_400),
        export_table=_names(env, "EXPORT_TABLE", ("orders",))[0],
        export_columns=_names(env, "EXPORT_COLUMNS", DEMO_COLUMNS),
        export_date_column=_names(env, "EXPORT_DATE_COLUMN", ("order_date",))[0],
        export_statement_timeout_s=env_int(env, "EXPORT_STATEMENT_TIMEOUT_S", 3_600, 0, 7 * 86_400),
        auth=auth,
        **_replica_acks(env, redis_url),
        redis_tls_ca_file=credentials.redis_tls_ca_file(env, redis_url),
        jobs_modules=_jobs_modules(env),
        **_quotas(env),
        web_fast_transport=env_bool(env, "WEB_FAST_TRANSPORT", True),
        broker_transport_fix=env_bool(env, "BROKER_TRANSPORT_FIX", True),
        **_observability(env),
        **_pings(env),
    )


# Nginx (and the Kubernetes ingress) close a proxied socket silent for 75 s.
MAX_PING_SILENCE_S = 60


def _pings(env):
    """WEB_PING_INTERVAL_S and WEB_PING_TIMEOUT_S: their sum is the longest a client
    waits on a silent web before it reconnects (docs/configuration.md)."""
    interval = env_int(env, "WEB_PING_INTERVAL_S", 7, 1, MAX_PING_SILENCE_S)
    timeout = env_int(env, "WEB_PING_TIMEOUT_S", 7, 1, MAX_PING_SILENCE_S)
    if interval + timeout > MAX_PING_SILENCE_S:
        raise ConfigError(
            f"WEB_PING_INTERVAL_S + WEB_PING_TIMEOUT_S must be at most {MAX_PING_SILENCE_S} "
            f"(Nginx closes a socket silent for 75 s), got {interval} + {timeout}"
        )
    return {"web_ping_interval_s": interval, "web_ping_timeout_s": timeout}


def _observability(env):
    """LOG_FORMAT (text or json) and OTEL_EXPORTER_OTLP_ENDPOINT (traces when set)."""
    log_format = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, got {log_format[:40]!r}")
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    parts = urlsplit(endpoint)
    if endpoint and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an OTLP/HTTP base URL, e.g. "
            "http://otel-collector:4318"
        )
    if endpoint and importlib.util.find_spec("opentelemetry.sdk") is None:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_ENDPOINT needs the tracing extra in the image: "
            "PIP_EXTRAS=tracing in .env, then make up (or pip install 'taskbeam[tracing]')"
        )
    return {"log_format": log_format, "otel_endpoint": endpoint}


def _jobs_modules(env):
    """JOBS_MODULES: comma-separated import paths (a package means every module in it)."""
    raw = env.get("JOBS_MODULES")
    paths = tuple(p.strip() for p in ("jobs" if raw is None else raw).split(",") if p.strip())
    for path in paths:
        if not all(part.isidentifier() for part in path.split(".")):
            raise ConfigError(
                f"JOBS_MODULES: {path[:80]!r} is not an import path like jobs.reports"
            )
    return paths


def _quotas(env):
    """What one client may accumulate and ask for (taskbeam/quotas.py)."""
    return {
        "anonymous_task_retention_s": env_int(
            env, "ANONYMOUS_TASK_RETENTION_S", 3_600, 60, 90 * 86_400
        ),
        "max_active_tasks_per_ip": env_int(env, "MAX_ACTIVE_TASKS_PER_IP", 30, 0, 1_000_000),
        "max_workflow_children": env_int(env, "MAX_WORKFLOW_CHILDREN", 1_000, 1, 10_000),
        "redis_memory_high_water_pct": env_int(env, "REDIS_MEMORY_HIGH_WATER_PCT", 80, 10, 100),
        "export_quota_bytes": env_int(env, "EXPORT_QUOTA_BYTES", 0, 0, 1 << 60),
        "export_quota_per_owner_bytes": env_int(
            env, "EXPORT_QUOTA_PER_OWNER_BYTES", 1_073_741_824, 0, 1 << 60
        ),
        "export_quota_per_ip_bytes": env_int(
            env, "EXPORT_QUOTA_PER_IP_BYTES", 2_147_483_648, 0, 1 << 60
        ),
        "export_min_free_pct": env_int(env, "EXPORT_MIN_FREE_PCT", 10, 0, 90),
        "subscribe_rate_per_s": env_int(env, "SUBSCRIBE_RATE_PER_S", 20, 1, 100_000),
        "subscribe_replay_bytes_per_s": env_int(
            env, "SUBSCRIBE_REPLAY_BYTES_PER_S", 1_048_576, 65_536, 1 << 40
        ),
        "web_connects_per_s": env_int(env, "WEB_CONNECTS_PER_S", 500, 0, 1_000_000),
    }


def _replica_acks(env, redis_url):
    """REDIS_WAIT_REPLICAS (1 in Sentinel mode, else 0) and REDIS_WAIT_TIMEOUT_MS."""
    ha = sentinel.is_sentinel_url(redis_url)
    return {
        "redis_wait_replicas": env_int(env, "REDIS_WAIT_REPLICAS", 1 if ha else 0, 0, 10),
        "redis_wait_timeout_ms": env_int(env, "REDIS_WAIT_TIMEOUT_MS", 1_000, 10, 60_000),
    }


# The demo dataset's table (see taskbeam/demo_data.py), exported by default.
DEFAULT_DATABASE_URL = "sqlite:////data/demo/orders.sqlite3"
DEMO_COLUMNS = ("id", "order_date", "customer", "product", "region", "quantity", "amount")


def _database_url(env):
    url = env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    if "://" not in url:
        raise ConfigError(
            "DATABASE_URL must be an SQLAlchemy URL, e.g. "
            "postgresql+psycopg://user:password@host/db"
        )
    password = urlsplit(url).password
    if password is not None and password.lower() in credentials.PLACEHOLDER_SECRETS:
        raise ConfigError(
            "DATABASE_URL has a placeholder password (for the PostgreSQL demo: "
            "POSTGRES_EXPORT_PASSWORD in .env); `make up` writes random ones"
        )
    return url


@functools.lru_cache(maxsize=1)
def current(need_secret=False):
    """The process's settings, loaded once (for job code, which gets no arguments)."""
    return load_or_exit(need_secret=need_secret)


def load_or_exit(**kwargs):
    """``load`` for process start-up: a bad setting ends the process with its message."""
    try:
        return load(**kwargs)
    except ConfigError as exc:
        sys.stderr.write(f"taskbeam: configuration error: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    from . import registry

    role = sys.argv[1] if len(sys.argv) > 1 else "web"
    checked = load_or_exit(need_secret=(role == "web"))
    # The jobs modules too, here before the server starts: inside a Gunicorn worker
    # the same exit only makes Gunicorn start another worker, again and again.
    registry.load_or_exit(checked.jobs_modules)
    print(f"taskbeam: configuration for {role} is valid")
