"""Unit tests for environment validation in taskbeam.config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskbeam import config

SECRET = "0123456789abcdef" * 2


def env(**overrides):
    base = {"REDIS_URL": "redis://:0123456789abcdef@redis:6379/0", "SECRET_KEY": SECRET}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_load_with_defaults():
    settings = config.load(env())
    assert settings.redis_url == "redis://:0123456789abcdef@redis:6379/0"
    assert settings.secret_key == SECRET
    assert settings.namespace == "taskbeam"
    assert settings.allowed_origins == ()
    assert settings.progress_coalesce_ms == 100
    assert settings.event_log_maxlen == 10_000
    assert settings.task_retention_s == 7 * 86_400
    assert settings.export_ttl_s == 86_400
    assert settings.database_url == config.DEFAULT_DATABASE_URL
    assert settings.task_time_limit_s == 3_600
    assert settings.max_redeliveries == 3
    assert settings.rate_limit_per_minute == 120


def test_rediss_scheme_accepted():
    assert config.load(env(REDIS_URL="rediss://redis:6380/1")).redis_url.startswith("rediss://")


def test_missing_redis_url():
    with pytest.raises(config.ConfigError, match="REDIS_URL is required"):
        config.load(env(REDIS_URL=None))


@pytest.mark.parametrize("url", ["http://redis:6379/0", "redis://", "localhost:6379"])
def test_bad_redis_url(url):
    with pytest.raises(config.ConfigError, match="REDIS_URL must look like"):
        config.load(env(REDIS_URL=url))


@pytest.mark.parametrize("key", [None, "", "change-me", "CHANGE-ME", "short-but-random-9f2c"])
def test_bad_secret_key_refused(key):
    with pytest.raises(config.ConfigError, match="SECRET_KEY"):
        config.load(env(SECRET_KEY=key))


def test_worker_does_not_need_secret():
    settings = config.load(env(SECRET_KEY=None), need_secret=False)
    assert settings.secret_key is None


def test_non_integer_refused():
    with pytest.raises(config.ConfigError, match="EVENT_LOG_MAXLEN must be an integer"):
        config.load(env(EVENT_LOG_MAXLEN="ten"))


@pytest.mark.parametrize(
    "name, value",
    [
        ("RATE_LIMIT_PER_MINUTE", "10"),
        ("PROGRESS_COALESCE_MS", "-1"),
        ("TASK_MAX_REDELIVERIES", "101"),
    ],
)
def test_out_of_range_integer_refused(name, value):
    with pytest.raises(config.ConfigError, match=f"{name} must be between"):
        config.load(env(**{name: value}))


def test_integer_overrides_and_blank_means_default():
    settings = config.load(env(RATE_LIMIT_PER_MINUTE=" 60 ", TASK_RETENTION_S=""))
    assert settings.rate_limit_per_minute == 60
    assert settings.task_retention_s == 7 * 86_400
    assert settings.export_ttl_s == 86_400
    assert settings.database_url == config.DEFAULT_DATABASE_URL


def test_allowed_origins_parsed():
    settings = config.load(env(ALLOWED_ORIGINS=" https://a.example/, http://b.example:8080 ,,"))
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")


@pytest.mark.parametrize("origin", ["a.example", "ftp://a.example", "https://a.example/app"])
def test_bad_allowed_origin_refused(origin):
    with pytest.raises(config.ConfigError, match="ALLOWED_ORIGINS"):
        config.load(env(ALLOWED_ORIGINS=origin))


@pytest.mark.parametrize("namespace", ["", "has space", "a:b", "a/b"])
def test_bad_namespace_refused(namespace):
    with pytest.raises(config.ConfigError, match="TASKBEAM_NAMESPACE"):
        config.load(env(TASKBEAM_NAMESPACE=namespace))


def test_socketio_channel_contains_namespace():
    settings = config.load(env(TASKBEAM_NAMESPACE="prod-eu_1"))
    assert settings.namespace == "prod-eu_1"
    assert "prod-eu_1" in settings.socketio_channel


def test_load_or_exit_exits_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc_info:
        config.load_or_exit(env={})
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("taskbeam: configuration error: REDIS_URL is required")
    assert err.count("\n") == 1 and err.endswith("\n")


@pytest.mark.parametrize("role", ["web", "worker"])
def test_the_start_scripts_check_stops_on_a_jobs_module_that_fails(role):
    # web/start.sh and worker/start.sh run it before Gunicorn or Celery: Gunicorn
    # would start its worker again and again on the app's exit, never stopping.
    done = subprocess.run(
        [sys.executable, "-m", "taskbeam.config", role],
        env={**os.environ, **env(JOBS_MODULES="jobs,no_such_jobs_module")},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout
    assert done.stderr.splitlines() == [
        "taskbeam: JOBS_MODULES: no_such_jobs_module failed to import: "
        "ModuleNotFoundError: No module named 'no_such_jobs_module'"
    ]


def test_load_or_exit_returns_settings():
    assert config.load_or_exit(env=env()).secret_key == SECRET


@pytest.mark.parametrize(
    "url",
    [
        "redis://:change-me@redis:6379/0",
        "redis://:CHANGEME@redis:6379/0",
        "rediss://user:change-me@redis:6380/0",
        "redis://:@redis:6379/0",
    ],
)
def test_placeholder_redis_password_refused(url):
    with pytest.raises(config.ConfigError, match="REDIS_URL has a placeholder password"):
        config.load(env(REDIS_URL=url), need_secret=False)


def test_placeholder_redis_password_message_does_not_echo_the_url():
    with pytest.raises(config.ConfigError) as exc_info:
        config.load(env(REDIS_URL="redis://:change-me@redis:6379/0"))
    assert "change-me@" not in str(exc_info.value)


def test_limit_and_cookie_defaults():
    settings = config.load(env())
    assert settings.max_active_tasks == 10
    assert settings.rate_limit_per_ip_per_minute == 600
    assert settings.session_cookie_secure is False
    assert settings.allowed_hosts == ()


@pytest.mark.parametrize(
    "raw, expected",
    [("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("", False)],
)
def test_session_cookie_secure_parsed(raw, expected):
    assert config.load(env(SESSION_COOKIE_SECURE=raw)).session_cookie_secure is expected


def test_session_cookie_secure_garbage_refused():
    with pytest.raises(config.ConfigError, match="SESSION_COOKIE_SECURE"):
        config.load(env(SESSION_COOKIE_SECURE="maybe"))


@pytest.mark.parametrize("name", ["WEB_FAST_TRANSPORT", "BROKER_TRANSPORT_FIX"])
def test_the_switches_back_to_stock_libraries_are_settings(name):
    def switch(raw):
        return getattr(config.load(env(**{name: raw}), need_secret=False), name.lower())

    assert switch(None) is True and switch("") is True and switch("1") is True
    assert switch("0") is False and switch("off") is False
    with pytest.raises(config.ConfigError, match=name):
        switch("maybe")


def test_allowed_hosts_parsed_and_include_the_allowed_origins_hosts():
    settings = config.load(
        env(
            ALLOWED_HOSTS=" App.Example, tasks.example ,,",
            ALLOWED_ORIGINS="https://partner.example:8443",
        )
    )
    assert settings.allowed_hosts == ("app.example", "tasks.example", "partner.example")


@pytest.mark.parametrize("host", ["https://a.example", "a.example:8080", "a example", "a/b"])
def test_bad_allowed_host_refused(host):
    with pytest.raises(config.ConfigError, match="ALLOWED_HOSTS"):
        config.load(env(ALLOWED_HOSTS=host))


def test_secrets_read_from_files(tmp_path):
    # Docker and Kubernetes secrets arrive as files: NAME_FILE names one.
    (tmp_path / "key").write_text("k0123456789" * 4 + "\n")
    (tmp_path / "redis").write_text("p@ss/word-0123456\n")
    (tmp_path / "db").write_text("postgresql+psycopg://u:p@db/shop")
    settings = config.load(
        env(
            SECRET_KEY=None,
            SECRET_KEY_FILE=str(tmp_path / "key"),
            REDIS_URL="redis://redis:6379/0",
            REDIS_PASSWORD_FILE=str(tmp_path / "redis"),
            DATABASE_URL_FILE=str(tmp_path / "db"),
        )
    )
    assert settings.secret_key == "k0123456789" * 4
    assert settings.redis_url == "redis://:p%40ss%2Fword-0123456@redis:6379/0"
    assert settings.database_url == "postgresql+psycopg://u:p@db/shop"


def test_a_redis_password_file_keeps_the_urls_user(tmp_path):
    # Kubernetes and Swarm: each role's REDIS_URL names its ACL user, the file its password.
    (tmp_path / "redis").write_text("web-pw-0123456789\n")
    url = "redis://web@redis:6379/0"
    settings = config.load(env(REDIS_URL=url, REDIS_PASSWORD_FILE=str(tmp_path / "redis")))
    assert settings.redis_url == "redis://web:web-pw-0123456789@redis:6379/0"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SECRET_KEY_FILE": "/nonexistent/key"}, "set SECRET_KEY or SECRET_KEY_FILE"),
        ({"REDIS_URL": None, "REDIS_URL_FILE": "/nonexistent/url"}, "cannot read"),
        ({"REDIS_PASSWORD": "x" * 24}, "REDIS_URL without a password"),
    ],
)
def test_bad_secret_settings_refused(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env(**overrides))


def test_an_empty_secret_file_is_refused(tmp_path):
    (tmp_path / "key").write_text("\n")
    with pytest.raises(config.ConfigError, match="empty"):
        config.load(env(SECRET_KEY=None, SECRET_KEY_FILE=str(tmp_path / "key")))


def test_export_statement_timeout_default_and_bounds():
    assert config.load(env()).export_statement_timeout_s == 3_600
    assert config.load(env(EXPORT_STATEMENT_TIMEOUT_S="0")).export_statement_timeout_s == 0
    with pytest.raises(config.ConfigError, match="EXPORT_STATEMENT_TIMEOUT_S"):
        config.load(env(EXPORT_STATEMENT_TIMEOUT_S="-1"))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://taskbeam_export:change-me@postgres:5432/taskbeam",
        "postgresql+psycopg://taskbeam_export:@postgres:5432/taskbeam",
    ],
)
def test_placeholder_database_password_refused(url):
    with pytest.raises(config.ConfigError, match="DATABASE_URL has a placeholder password") as exc:
        config.load(env(DATABASE_URL=url), need_secret=False)
    assert "change-me@" not in str(exc.value)


def test_database_url_without_password_accepted():
    url = "postgresql+psycopg://reader@db.internal/shop"
    assert config.load(env(DATABASE_URL=url)).database_url == url


STRONG = "9f2c4e1ab87d03c6" * 2  # hex, as `make up` writes it


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"REDIS_URL": "redis://:a@redis:6379/0"}, "Redis password"),
        ({"REDIS_URL": "redis://:aaaaaaaaaaaaaaaaaaaaaaaa@redis:6379/0"}, "Redis password"),
        ({"REDIS_URL": "redis://redis:6379/0", "REDIS_PASSWORD": "ab" * 12}, "Redis password"),
        ({"SECRET_KEY": "a" * 32}, "SECRET_KEY"),
        ({"SECRET_KEY": "abcd" * 10}, "SECRET_KEY"),
        (
            {"AUTH_MODE": "jwt", "JWT_ISSUER": "i", "JWT_AUDIENCE": "a", "JWT_SECRET": "s" * 40},
            "JWT_SECRET",
        ),
    ],
)
def test_weak_secrets_refused(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env(**overrides))


def test_generated_secrets_pass_and_the_examples_placeholders_do_not():
    # tests/run.sh and the Makefile write hex from /dev/urandom (od -tx1 -N24 / -N32).
    import secrets

    for _ in range(200):
        config.load(
            env(
                REDIS_URL=f"redis://:{secrets.token_hex(24)}@redis:6379/0",
                SECRET_KEY=secrets.token_hex(32),
            )
        )
    with open(".env.example", encoding="utf-8") as f:
        example = dict(
            line.split("=", 1) for line in f.read().splitlines() if "=" in line and line[0] != "#"
        )
    for name in ("SECRET_KEY", "REDIS_PASSWORD"):
        with pytest.raises(config.ConfigError):
            config.load(env(**{name: example[name]}, REDIS_URL="redis://redis:6379/0"))


@pytest.mark.parametrize(
    "extra",
    [{"SESSION_COOKIE_SECURE": "1"}, {"ALLOWED_ORIGINS": "https://tasks.example"}],
)
def test_dev_login_behind_tls_stops_the_start(extra):
    auth = {"AUTH_MODE": "jwt", "JWT_ISSUER": "i", "JWT_AUDIENCE": "a", "JWT_SECRET": STRONG}
    assert config.load(env(**auth, AUTH_DEV_LOGIN="1")).auth.dev_login
    with pytest.raises(config.ConfigError, match="AUTH_DEV_LOGIN=1"):
        config.load(env(**auth, AUTH_DEV_LOGIN="1", **extra))


def test_the_heartbeat_notices_a_silent_web_within_14_s_by_default():
    settings = config.load(env())
    assert (settings.web_ping_interval_s, settings.web_ping_timeout_s) == (7, 7)
    settings = config.load(env(WEB_PING_INTERVAL_S="25", WEB_PING_TIMEOUT_S="20"))
    assert (settings.web_ping_interval_s, settings.web_ping_timeout_s) == (25, 20)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"WEB_PING_INTERVAL_S": "0"}, "WEB_PING_INTERVAL_S must be between 1 and 60, got 0"),
        ({"WEB_PING_TIMEOUT_S": "61"}, "WEB_PING_TIMEOUT_S must be between 1 and 60, got 61"),
        ({"WEB_PING_TIMEOUT_S": "2.5"}, "WEB_PING_TIMEOUT_S must be an integer"),
        (
            {"WEB_PING_INTERVAL_S": "45", "WEB_PING_TIMEOUT_S": "20"},
            r"WEB_PING_INTERVAL_S \+ WEB_PING_TIMEOUT_S must be at most 60 .*got 45 \+ 20",
        ),
    ],
)
def test_a_heartbeat_out_of_range_is_refused(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env(**overrides))
