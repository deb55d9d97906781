"""The settings that are secrets, and the identity checks: where a secret may come
from (``NAME_FILE``), how strong it must be, the Redis URL and its password, the
signing key, the Redis TLS CA and the JWT settings (``AUTH_MODE``). Read by
:func:`taskbeam.config.load`; a bad value raises :class:`ConfigError` like any setting.
"""

from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from . import sentinel
from .envvars import ConfigError, env_bool, env_int

# Values shipped in .env.example; refused so a copied example never runs as is.
PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "dev", "please-change-me"}
MIN_SECRET_LENGTH = 32
# A Redis password may be shorter than a signing key, not weaker than a random one:
# 16 characters and, like every secret, MIN_SECRET_DISTINCT different ones (a hex
# string from `make up` has ~14 in 32; 'a' * 32 has one).
MIN_PASSWORD_LENGTH = 16
MIN_SECRET_DISTINCT = 8
GENERATE_HINT = "python3 -c 'import secrets; print(secrets.token_hex(32))'"


def weak(secret, min_length):
    """True for a placeholder, or a secret too short or of too few different characters."""
    return (
        secret.lower() in PLACEHOLDER_SECRETS
        or len(secret) < min_length
        or len(set(secret)) < MIN_SECRET_DISTINCT
    )


# Secrets may come from files instead (Docker and Kubernetes secrets): NAME_FILE
# names the file; its content, less surrounding whitespace, is NAME.
SECRET_FILE_VARIABLES = ("SECRET_KEY", "REDIS_URL", "REDIS_PASSWORD", "DATABASE_URL", "JWT_SECRET")
MAX_SECRET_FILE_BYTES = 65_536


def with_secret_files(env):
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


def redis_url(env):
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
    if parts.password is not None and weak(parts.password, MIN_PASSWORD_LENGTH):
        raise ConfigError(
            f"the Redis password (REDIS_PASSWORD) is weak: use at least {MIN_PASSWORD_LENGTH} "
            f"characters, {MIN_SECRET_DISTINCT} of them different; `make up` writes a "
            "random one, or run: python3 -c 'import secrets; print(secrets.token_hex(24))'"
        )
    return url


def secret_key(env):
    key = env.get("SECRET_KEY", "").strip()
    if weak(key, MIN_SECRET_LENGTH):
        raise ConfigError(
            "SECRET_KEY is missing, a placeholder, shorter than "
            f"{MIN_SECRET_LENGTH} characters or of fewer than {MIN_SECRET_DISTINCT} different "
            f"ones; `make up` writes a random one to .env, or run: {GENERATE_HINT}"
        )
    return key


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


def auth_settings(env):
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
        jwt_leeway_s=env_int(env, "JWT_LEEWAY_S", 10, 0, 300),
        dev_login=env_bool(env, "AUTH_DEV_LOGIN"),
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
        if weak(secret, MIN_SECRET_LENGTH):
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


def redis_tls_ca_file(env, redis_url):
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
