"""Settings read once from the environment and validated at start-up.

Every variable is documented in ``.env.example``. A bad value stops the process
with one clear line instead of failing later on the first request or task.
Run ``python -m taskbeam.config`` to check the current environment.
"""

import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from . import sentinel
from .store.keys import Keys

# Values shipped in .env.example; refused so a copied example never runs as is.
PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "dev", "please-change-me"}
MIN_SECRET_LENGTH = 32
# A Redis password may be shorter than a signing key, not weaker than a random one:
# 16 characters and, like every secret, MIN_SECRET_DISTINCT different ones (a hex
# string from `make up` has ~14 in 32; 'a' * 32 has one).
MIN_PASSWORD_LENGTH = 16
MIN_SECRET_DISTINCT = 8
GENERATE_HINT = "python3 -c 'import secrets; print(secrets.token_hex(32))'"


def _weak(secret, min_length):
    """True for a placeholder, or a secret too short or of too few different characters."""
    return (
        secret.lower() in PLACEHOLDER_SECRETS
        or len(secret) < min_length
        or len(set(secret)) < MIN_SECRET_DISTINCT
    )


class ConfigError(ValueError):
    """An environment variable is missing or has an unusable value."""


def _int(env, name, default, low, high):
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


# Secrets may come from files instead (Docker and Kubernetes secrets): NAME_FILE
# names the file; its content, less surrounding whitespace, is NAME.
SECRET_FILE_VARIABLES = ("SECRET_KEY", "REDIS_URL", "REDIS_PASSWORD", "DATABASE_URL", "JWT_SECRET")
MAX_SECRET_FILE_BYTES = 65_536


def _with_secret_files(env):
    """``env`` with every ``NAME_FILE`` of :data:`SECRET_FILE_VARIABLES` read into
    ``NAME``, and ``REDIS_PASSWORD`` put into a ``REDIS_URL`` that has none (after
    the URL's user name, if it has one)."""
    env = dict(env)
    for name in SECRET_FILE_VARIABLES:
        path = env.pop(f"{name}_FILE", "").strip()
        if not path:
            continue
        if env.get(name, "").strip():
            raise ConfigError(f"set {name} or {name}_FILE, not both")
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read(MAX_SECRET_FILE_BYTES + 1).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path!r} ({exc})") from None
        if len(value) > MAX_SECRET_FILE_BYTES or not value:
            raise ConfigError(f"{name}_FILE: {path!r} is empty or larger than 64 KiB")
        env[name] = value
    password = env.pop("REDIS_PASSWORD", "").strip()
    if password:
        parts = urlsplit(env.get("REDIS_URL", "").strip())
        if parts.password is not None or not parts.hostname:
            raise ConfigError(
                "REDIS_PASSWORD (or REDIS_PASSWORD_FILE) needs a REDIS_URL without a "
                "password, e.g. redis://redis:6379/0"
            )
        # The URL's user stays: an ACL user of Redis's own (redis/start.sh).
        user, _, host = parts.netloc.rpartition("@")
        netloc = f"{user}:{quote(password, safe='')}@{host}"
        env["REDIS_URL"] = urlunsplit(parts._replace(netloc=netloc))
    return env


def _redis_url(env):
    url = env.get("REDIS_URL", "").strip()
    if not url:
        raise ConfigError("REDIS_URL is required, e.g. redis://:PASSWORD@redis:6379/0")
    parts = urlsplit(url)
    if sentinel.is_sentinel_url(url):  # High availability (docs/ha.md), redis/ha.yml
        try:
            sentinel.parse(url)
        except ValueError as exc:
            raise ConfigError(
                f"REDIS_URL: {exc}; a Sentinel URL looks like "
                "redis+sentinel://:PASSWORD@HOST:26379,HOST:26379,HOST:26379/0/MASTER_NAME"
            ) from None
    elif parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError("REDIS_URL must look like redis://:PASSWORD@HOST:6379/0 (or rediss://)")
    # A URL without a password is allowed (a Redis of your own on a private network).
    if parts.password is not None and parts.password.lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(
            "REDIS_URL has a placeholder password (REDIS_PASSWORD in .env is "
            "empty or the example's); `make up` writes a random one, or run: "
            "python3 -c 'import secrets; print(secrets.token_hex(24))'"
        )
    if parts.password is not None and _weak(parts.password, MIN_PASSWORD_LENGTH):
        raise ConfigError(
            f"the Redis password (REDIS_PASSWORD) is weak: use at least {MIN_PASSWORD_LENGTH} "
            f"characters, {MIN_SECRET_DISTINCT} of them different; `make up` writes a "
            "random one, or run: python3 -c 'import secrets; print(secrets.token_hex(24))'"
        )
    return url


def _secret_key(env):
    key = env.get("SECRET_KEY", "").strip()
    if _weak(key, MIN_SECRET_LENGTH):
        raise ConfigError(
            "SECRET_KEY is missing, a placeholder, shorter than "
            f"{MIN_SECRET_LENGTH} characters or of fewer than {MIN_SECRET_DISTINCT} different "
            f"ones; `make up` writes a random one to .env, or run: {GENERATE_HINT}"
        )
    return key


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


def _bool(env, name, default=False):
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


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


AUTH_MODES = ("session", "jwt", "header")
# Asymmetric algorithms take a public key (PEM) or a JWKS file; HS256 a shared secret.
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")


@dataclass(frozen=True)
class AuthSettings:
    """Who owns a task (taskbeam/web/identity.py): AUTH_MODE and the JWT checks."""

    mode: str = "session"
    jwt_algorithm: str = "HS256"
    jwt_secret: str | None = None
    jwt_public_key_file: str = ""
    jwt_jwks_file: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: int = 10
    dev_login: bool = False


def _auth(env):
    mode = env.get("AUTH_MODE", "").strip().lower() or "session"
    if mode not in AUTH_MODES:
        raise ConfigError(f"AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    algorithm = env.get("JWT_ALGORITHM", "").strip().upper() or "HS256"
    if algorithm not in JWT_ALGORITHMS:
        raise ConfigError(f"JWT_ALGORITHM must be one of {', '.join(JWT_ALGORITHMS)}")
    auth = AuthSettings(
        mode=mode,
        jwt_algorithm=algorithm,
        jwt_secret=env.get("JWT_SECRET", "").strip() or None,
        jwt_public_key_file=env.get("JWT_PUBLIC_KEY_FILE", "").strip(),
        jwt_jwks_file=env.get("JWT_JWKS_FILE", "").strip(),
        jwt_issuer=env.get("JWT_ISSUER", "").strip(),
        jwt_audience=env.get("JWT_AUDIENCE", "").strip(),
        jwt_leeway_s=_int(env, "JWT_LEEWAY_S", 10, 0, 300),
        dev_login=_bool(env, "AUTH_DEV_LOGIN"),
    )
    if mode != "jwt":
        if auth.dev_login:
            raise ConfigError("AUTH_DEV_LOGIN=1 needs AUTH_MODE=jwt with JWT_ALGORITHM=HS256")
        return auth
    # exp, iss and aud are always checked: a token minted for another service is refused.
    if not auth.jwt_issuer or not auth.jwt_audience:
        raise ConfigError("AUTH_MODE=jwt needs JWT_ISSUER and JWT_AUDIENCE")
    if algorithm == "HS256":
        secret = auth.jwt_secret or ""
        if _weak(secret, MIN_SECRET_LENGTH):
            raise ConfigError(
                f"JWT_ALGORITHM=HS256 needs JWT_SECRET (or JWT_SECRET_FILE) of at least "
                f"{MIN_SECRET_LENGTH} characters, {MIN_SECRET_DISTINCT} of them different, "
                f"not a placeholder; run: {GENERATE_HINT}"
            )
        if auth.jwt_public_key_file or auth.jwt_jwks_file:
            raise ConfigError("JWT_ALGORITHM=HS256 takes JWT_SECRET, not a public key file")
    else:
        if bool(auth.jwt_public_key_file) == bool(auth.jwt_jwks_file):
            raise ConfigError(
                f"JWT_ALGORITHM={algorithm} needs one of JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE"
            )
        if auth.jwt_secret:
            raise ConfigError(f"JWT_ALGORITHM={algorithm} takes a public key, not JWT_SECRET")
        if auth.dev_login:
            raise ConfigError(
                "AUTH_DEV_LOGIN=1 needs JWT_ALGORITHM=HS256 (it signs with the secret)"
            )
    return auth


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
    auth: AuthSettings = AuthSettings()
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
    env = _with_secret_files(os.environ if env is None else env)
    namespace = env.get("TASKBEAM_NAMESPACE", "taskbeam").strip()
    if not namespace.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("TASKBEAM_NAMESPACE may hold only letters, digits, '-' and '_'")
    origins = _origins(env)
    redis_url = _redis_url(env)
    auth = _auth(env) if need_secret else AuthSettings()
    if auth.dev_login and (
        _bool(env, "SESSION_COOKIE_SECURE") or any(o.startswith("https:") for o in origins)
    ):
        # Behind TLS is where real users are; the dev login mints a token for any name.
        raise ConfigError(
            "AUTH_DEV_LOGIN=1 lets anyone sign in as anyone: it is for a local demo, not "
            "with https ALLOWED_ORIGINS or SESSION_COOKIE_SECURE=1"
        )
    return Settings(
        redis_url=redis_url,
        secret_key=_secret_key(env) if need_secret else None,
        namespace=namespace,
        allowed_origins=origins,
        allowed_hosts=_hosts(env, origins),
        session_cookie_secure=_bool(env, "SESSION_COOKIE_SECURE"),
        progress_coalesce_ms=_int(env, "PROGRESS_COALESCE_MS", 100, 0, 60_000),
        event_log_maxlen=_int(env, "EVENT_LOG_MAXLEN", 10_000, 100, 1_000_000),
        task_retention_s=_int(env, "TASK_RETENTION_S", 604_800, 60, 90 * 86_400),
        task_time_limit_s=_int(env, "TASK_TIME_LIMIT_S", 3_600, 10, 7 * 86_400),
        max_redeliveries=_int(env, "TASK_MAX_REDELIVERIES", 3, 0, 100),
        rate_limit_per_minute=_int(env, "RATE_LIMIT_PER_MINUTE", 120, 60, 100_000),
        max_active_tasks=_int(env, "MAX_ACTIVE_TASKS", 10, 1, 100_000),
        rate_limit_per_ip_per_minute=_int(env, "RATE_LIMIT_PER_IP_PER_MINUTE", 600, 60, 1_000_000),
        database_url=_database_url(env),
        export_dir=env.get("EXPORT_DIR", "").strip() or "/data/exports",
        export_ttl_s=_int(env, "EXPORT_TTL", 86_400, 10, 30 * 86_400),
        export_table=_names(env, "EXPORT_TABLE", ("orders",))[0],
        export_columns=_names(env, "EXPORT_COLUMNS", DEMO_COLUMNS),
        export_date_column=_names(env, "EXPORT_DATE_COLUMN", ("order_date",))[0],
        export_statement_timeout_s=_int(env, "EXPORT_STATEMENT_TIMEOUT_S", 3_600, 0, 7 * 86_400),
        auth=auth,
        **_replica_acks(env, redis_url),
        redis_tls_ca_file=_redis_tls_ca_file(env, redis_url),
        jobs_modules=_jobs_modules(env),
        **_quotas(env),
        web_fast_transport=_bool(env, "WEB_FAST_TRANSPORT", True),
        broker_transport_fix=_bool(env, "BROKER_TRANSPORT_FIX", True),
        **_observability(env),
        **_pings(env),
    )


# Nginx (and the Kubernetes ingress) close a proxied socket silent for 75 s.
MAX_PING_SILENCE_S = 60


def _pings(env):
    """WEB_PING_INTERVAL_S and WEB_PING_TIMEOUT_S: their sum is the longest a client
    waits on a silent web before it reconnects (docs/configuration.md)."""
    interval = _int(env, "WEB_PING_INTERVAL_S", 7, 1, MAX_PING_SILENCE_S)
    timeout = _int(env, "WEB_PING_TIMEOUT_S", 7, 1, MAX_PING_SILENCE_S)
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
        "anonymous_task_retention_s": _int(
            env, "ANONYMOUS_TASK_RETENTION_S", 3_600, 60, 90 * 86_400
        ),
        "max_active_tasks_per_ip": _int(env, "MAX_ACTIVE_TASKS_PER_IP", 30, 0, 1_000_000),
        "max_workflow_children": _int(env, "MAX_WORKFLOW_CHILDREN", 1_000, 1, 10_000),
        "redis_memory_high_water_pct": _int(env, "REDIS_MEMORY_HIGH_WATER_PCT", 80, 10, 100),
        "export_quota_bytes": _int(env, "EXPORT_QUOTA_BYTES", 0, 0, 1 << 60),
        "export_quota_per_owner_bytes": _int(
            env, "EXPORT_QUOTA_PER_OWNER_BYTES", 1_073_741_824, 0, 1 << 60
        ),
        "export_quota_per_ip_bytes": _int(
            env, "EXPORT_QUOTA_PER_IP_BYTES", 2_147_483_648, 0, 1 << 60
        ),
        "export_min_free_pct": _int(env, "EXPORT_MIN_FREE_PCT", 10, 0, 90),
        "subscribe_rate_per_s": _int(env, "SUBSCRIBE_RATE_PER_S", 20, 1, 100_000),
        "subscribe_replay_bytes_per_s": _int(
            env, "SUBSCRIBE_REPLAY_BYTES_PER_S", 1_048_576, 65_536, 1 << 40
        ),
        "web_connects_per_s": _int(env, "WEB_CONNECTS_PER_S", 500, 0, 1_000_000),
    }


def _redis_tls_ca_file(env, redis_url):
    """REDIS_TLS_CA_FILE: the CA that signed Redis's certificates (TLS URLs only)."""
    path = env.get("REDIS_TLS_CA_FILE", "").strip()
    if not path:
        return ""
    if not sentinel.uses_tls(redis_url):
        raise ConfigError(
            "REDIS_TLS_CA_FILE needs a TLS REDIS_URL: rediss:// or rediss+sentinel://"
        )
    try:
        with open(path, encoding="ascii") as f:
            if "BEGIN CERTIFICATE" not in f.read(MAX_SECRET_FILE_BYTES):
                raise ConfigError(f"REDIS_TLS_CA_FILE: {path!r} holds no PEM certificate")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"REDIS_TLS_CA_FILE: cannot read {path!r} ({exc})") from None
    return path


def _replica_acks(env, redis_url):
    """REDIS_WAIT_REPLICAS (1 in Sentinel mode, else 0) and REDIS_WAIT_TIMEOUT_MS."""
    ha = sentinel.is_sentinel_url(redis_url)
    return {
        "redis_wait_replicas": _int(env, "REDIS_WAIT_REPLICAS", 1 if ha else 0, 0, 10),
        "redis_wait_timeout_ms": _int(env, "REDIS_WAIT_TIMEOUT_MS", 1_000, 10, 60_000),
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
    if password is not None and password.lower() in PLACEHOLDER_SECRETS:
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
