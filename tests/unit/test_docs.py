"""The docs match the code: docs/api.md names every route, error code and state the
code has, and docs/configuration.md's settings table states the defaults the code uses."""

import re
from pathlib import Path

import pytest
from flask import Flask

from taskbeam import config, protocol
from taskbeam.web import api, errors, openapi

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

# Where an error code is chosen: the app's ApiError/_error/error_response calls,
# a job's JobError, and JSON bodies written out whole (WSGI middleware, Nginx).
CODE_PATTERNS = [
    r'ApiError\(\s*\d+,\s*"([a-z_]+)"',
    r'error_response\(\s*\d+,\s*"([a-z_]+)"',
    r'\b_error\(\s*"([a-z_]+)"',
    r'\bprotocol\.failed\(\s*"([a-z_]+)"',
    r'JobError\(\s*"([a-z_]+)"',
    r'"code":\s*"([a-z_]+)"',
    r'HTTP_CODES\.get\([^,]+,\s*"([a-z_]+)"\)',
    r'(?:Unauthenticated|_refused)\(\s*"([a-z_]+)"',
]
CODE_SOURCES = ["taskbeam/**/*.py", "nginx/*.conf"]


def doc():
    return API_DOC.read_text()


def documented(text, method, path):
    """True if the doc names ``METHOD path`` in a code span (a query may follow)."""
    return re.search(rf"`{method} {re.escape(path)}(\?[^`]*)?`", text) is not None


def app_routes():
    """(method, path) of every route the app serves, with ``<id>`` for the task id."""
    app = Flask(__name__)
    app.register_blueprint(api.bp)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method, re.sub(r"<[^>]+>", "<id>", rule.rule)))
    return routes


def error_codes():
    codes = set(errors.HTTP_CODES.values())
    for pattern in CODE_SOURCES:
        for path in ROOT.glob(pattern):
            text = path.read_text()
            for regex in CODE_PATTERNS:
                codes.update(re.findall(regex, text))
    return codes


def test_the_code_scan_finds_codes():
    # Guards the scan itself: a regex that stopped matching would pass everything.
    assert {
        "invalid_json",
        "not_found",
        "unknown_event",
        "simulated_failure",
        "time_limit",
        "http_error",
        "bad_request",
    } <= error_codes()


def test_every_route_is_documented():
    text = doc()
    missing = sorted(r for r in app_routes() if not documented(text, *r))
    assert not missing, f"routes missing from docs/api.md: {missing}"


def test_every_documented_route_exists():
    routes = app_routes()
    named = set(re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", doc()))
    assert named - routes == set(), "docs/api.md names routes the app does not serve"


@pytest.mark.parametrize("code", sorted(error_codes()))
def test_every_error_code_is_documented(code):
    assert f"`{code}`" in doc(), f"error code {code!r} is used in the code but not in docs/api.md"


@pytest.mark.parametrize("state", protocol.STATES)
def test_every_state_is_documented(state):
    assert f"`{state}`" in doc()


def test_openapi_paths_match_the_app():
    settings = config.load({"REDIS_URL": "redis://redis:6379/0"}, need_secret=False)
    served = {
        (method.upper(), re.sub(r"\{[^}]+\}", "<id>", path))
        for path, methods in openapi.openapi_document(settings)["paths"].items()
        for method in methods
    }
    # The document does not describe itself, nor the internal metrics endpoint.
    expected = app_routes() - {("GET", "/api/openapi.json"), ("GET", "/metrics")}
    assert served == expected


def test_socketio_events_are_documented():
    text = doc()
    for name in ("subscribe", "unsubscribe", protocol.TASK_UPDATE_EVENT):
        assert f"**`{name}`**" in text


# --- docs/configuration.md: the settings table states the code's defaults -----------


def settings_table():
    """The text of docs/configuration.md from its title to the next heading."""
    return CONFIG_DOC.read_text().split("# Configuration", 1)[1].split("\n#", 1)[0]


def table_defaults():
    """{VARIABLE: default} for every row of the settings table whose default is a
    literal in backticks (rows like `A`, `B` | `1`, `2` give one pair each)."""
    table = settings_table()
    pairs = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        values = [v.strip() for v in cells[1].split(",")]
        for name, value in zip(names, values):
            if value.startswith("`") and value.endswith("`"):
                pairs[name] = value.strip("`")
    return pairs


def test_settings_table_is_parsed():
    assert {"PROGRESS_COALESCE_MS", "TASK_RETENTION_S", "DEMO_ROWS"} <= set(table_defaults())


def test_table_defaults_match_env_example_and_compose():
    env_example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    compose_file = (ROOT / "docker-compose.yml").read_text()
    compose = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", compose_file))
    wrong = {}
    for name, value in table_defaults().items():
        for source, values in ((".env.example", env_example), ("docker-compose.yml", compose)):
            if values.get(name) not in (None, value):
                wrong[f"{name} ({source})"] = (value, values[name])
    assert not wrong, f"docs/configuration.md default vs file: {wrong}"


def test_table_defaults_match_config():
    source = "".join((ROOT / "taskbeam" / f).read_text() for f in ("config.py", "credentials.py"))
    in_code = dict(re.findall(r'env_int\(\s*env, "([A-Z_]+)", ([\d_]+),', source))
    # Switches: `env_bool(env, "NAME", True)` is documented as `1`, a default of False as `0`.
    for name, default in re.findall(r'env_bool\(env, "([A-Z_]+)"(?:, (True|False))?\)', source):
        in_code[name] = "1" if default == "True" else "0"
    assert {"SESSION_COOKIE_SECURE", "WEB_FAST_TRANSPORT"} <= set(in_code)
    checked = 0
    for name, value in table_defaults().items():
        if name in in_code:
            assert int(in_code[name]) == int(value), (
                f"{name}: docs/configuration.md {value}, the code {in_code[name]}"
            )
            checked += 1
    assert checked >= 5


def test_every_env_example_variable_is_in_the_settings_table():
    table = settings_table()
    names = re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)
    missing = [name for name in names if f"`{name}`" not in table]
    assert not missing, f"settings missing from docs/configuration.md's table: {missing}"


def test_no_citation_of_files_outside_the_repository():
    """The API contract a user reads is docs/api.md, not a file they do not have."""
    paths = [
        ROOT / "README.md",
        *ROOT.glob("taskbeam/**/*.py"),
        *ROOT.glob("web/*.py"),
        *ROOT.glob("web/*.sh"),
        *ROOT.glob("web/static/*.js"),
        *ROOT.glob("web/static/*.html"),
        *ROOT.glob("docs/*.md"),
        ROOT / "mkdocs.yml",
    ]
    citing = [
        str(p.relative_to(ROOT))
        for p in paths
        if re.search(r"CONTRACT\.md|shared/docs", p.read_text())
    ]
    assert not citing


def test_readme_links_point_at_files_in_the_repository():
    """mkdocs checks the links of docs/; the README is outside the site, so here."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t)]
    assert len(local) >= 10, "the link scan found too few links"
    missing = sorted({t for t in local if t and not (ROOT / t).exists()})
    assert not missing, f"README.md links to files that do not exist: {missing}"
