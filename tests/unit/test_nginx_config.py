"""Unit tests for Nginx's config template and nginx/start.sh, which renders it.

The running config is checked by Nginx itself in the integration stack; these catch
a limit that is not filled in, a bad value that would start anyway, and a location
that loses the security headers (a location with any add_header inherits none)."""

import os
import re
import subprocess
from pathlib import Path

import pytest

NGINX = Path(__file__).resolve().parents[2] / "nginx"
LIMITS = {
    "CREATES_PER_MINUTE_PER_IP": "7",
    "CREATE_BURST_PER_IP": "3",
    "EVENT_READS_PER_SECOND_PER_IP": "11",
    "EVENT_READS_BURST_PER_IP": "13",
    "WS_CONNECTIONS_PER_IP": "17",
}


def render(**env):
    return subprocess.run(
        ["sh", str(NGINX / "start.sh"), "render"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": os.environ["PATH"], "NGINX_TEMPLATE": str(NGINX / "nginx.conf"), **env},
    )


def config_lines(text):
    return [line.split("#", 1)[0] for line in text.splitlines()]


def test_every_limit_is_filled_in_from_the_environment():
    done = render(**LIMITS)
    assert done.returncode == 0, done.stderr
    text = "\n".join(config_lines(done.stdout))
    assert "${" not in text
    assert "zone=creates:10m rate=7r/m" in text
    assert "zone=event_reads:10m rate=11r/s" in text
    assert "limit_req zone=creates burst=3 nodelay" in text
    assert "limit_req zone=event_reads burst=13 nodelay" in text
    assert "limit_conn sockets 17" in text


def test_defaults_render():
    done = render()
    assert done.returncode == 0, done.stderr
    assert "limit_conn sockets 200" in done.stdout
    assert "rate=120r/m" in done.stdout


def test_blank_means_the_default():
    assert "limit_conn sockets 200" in render(**{**LIMITS, "WS_CONNECTIONS_PER_IP": ""}).stdout


@pytest.mark.parametrize("value", ["0", "ten", "5; evil", "-1", "012"])
def test_a_bad_limit_stops_the_start_with_a_clear_message(value):
    done = render(**{**LIMITS, "WS_CONNECTIONS_PER_IP": value})
    assert done.returncode == 2
    assert "WS_CONNECTIONS_PER_IP must be a positive integer" in done.stderr
    assert done.stdout == ""


def blocks(text):
    """(name, body) of each ``location`` block and of the ``server`` level itself."""
    lines = config_lines(text)
    found, stack = [], []
    for line in lines:
        opened = re.match(r"\s*(location\s+[^{]+|server)\s*\{", line)
        if opened:
            stack.append([opened.group(1).strip(), []])
            continue
        if line.strip() == "}" and stack:
            name, body = stack.pop()
            found.append((name, "\n".join(body)))
            continue
        if stack:
            stack[-1][1].append(line)
    return found


def test_every_location_with_its_own_headers_includes_the_security_headers():
    text = render(**LIMITS).stdout
    checked = 0
    for name, body in blocks(text):
        if name.startswith("location") and "add_header" in body:
            assert "include /etc/nginx/security-headers.conf;" in body, name
            checked += 1
    assert checked >= 4  # /vendor/, /, /_exports/, the error locations
    server = dict(blocks(text))["server"]
    assert "include /etc/nginx/security-headers.conf;" in server


def test_the_snippet_sets_the_three_headers():
    snippet = (NGINX / "security-headers.conf").read_text()
    for header in (
        "X-Content-Type-Options nosniff",
        "X-Frame-Options DENY",
        "Referrer-Policy same-origin",
    ):
        assert f"add_header {header} always;" in snippet


def test_the_web_upstream_is_web_unless_set():
    # Swarm sets tasks.web: each replica's address instead of the service's virtual IP.
    assert "set $web http://web:8000;" in render().stdout
    assert "set $web http://tasks.web:8000;" in render(WEB_UPSTREAM="tasks.web").stdout


@pytest.mark.parametrize("value", ["web;evil", "-web", "web:8000", "a b"])
def test_a_bad_web_upstream_stops_the_start(value):
    done = render(WEB_UPSTREAM=value)
    assert done.returncode == 2
    assert "WEB_UPSTREAM must be a host name" in done.stderr


def test_the_resolver_is_the_hosts_dns_server_unless_set():
    """/etc/resolv.conf's first server: Docker's under Compose, the cluster DNS under
    Kubernetes (Nginx itself never reads that file)."""
    with open("/etc/resolv.conf") as f:
        first = next(line.split()[1] for line in f if line.startswith("nameserver"))
    assert f"resolver {first} valid=5s" in render().stdout
    assert "resolver 10.96.0.10 valid=5s" in render(NGINX_RESOLVER="10.96.0.10").stdout


def test_a_resolver_that_would_inject_config_stops_the_start():
    done = render(NGINX_RESOLVER="10.0.0.1; include /etc/passwd")
    assert done.returncode == 2
    assert "NGINX_RESOLVER must be an address" in done.stderr


# --- Identity header and TLS (docs/identity.md) --------------------------------------


def test_every_location_that_reaches_the_app_sets_the_identity_header_itself():
    """A client's X-Taskbeam-User never reaches the app: Nginx overwrites it everywhere."""
    text = render(AUTH_PROXY_ADDRESSES="172.18.0.1,10.0.0.0/8").stdout
    proxied = [body for name, body in blocks(text) if "proxy_pass $web;" in body]
    assert len(proxied) == 2  # /socket.io/ and the API
    for body in proxied:
        assert "proxy_set_header X-Taskbeam-User $auth_user;" in body
    assert "172.18.0.1 1; 10.0.0.0/8 1;" in text
    assert "1       $http_x_auth_request_user;" in text
    assert "$http_x_forwarded_user;" in render(AUTH_PROXY_HEADER="X-Forwarded-User").stdout


def test_no_auth_proxy_address_means_the_header_is_never_believed():
    geo = render().stdout.split("geo $realip_remote_addr $from_auth_proxy {", 1)[1]
    geo = geo.split("}", 1)[0]
    assert [line.strip() for line in config_lines(geo) if line.strip()] == ["default 0;"]


def real_ip_lines(text):
    return [
        d.strip()
        for line in config_lines(text)
        for d in line.split(";")
        if d.strip().startswith(("set_real_ip_from", "real_ip_"))
    ]


def test_no_trusted_proxy_means_x_forwarded_for_is_never_believed():
    assert real_ip_lines(render().stdout) == []


def test_trusted_proxies_give_the_client_address_from_x_forwarded_for():
    text = render(TRUSTED_PROXY_CIDRS="10.42.0.0/16, fd00::/8").stdout
    assert real_ip_lines(text) == [
        "set_real_ip_from 10.42.0.0/16",
        "set_real_ip_from fd00::/8",
        "real_ip_header X-Forwarded-For",
        "real_ip_recursive on",
    ]
    # In the http block, so every limit's $binary_remote_addr is the client's.
    http = text.split("http {", 1)[1]
    assert http.index("set_real_ip_from") < http.index("limit_req_zone")
    # The auth proxy is still recognised by the connection's own address.
    assert "geo $realip_remote_addr $from_auth_proxy" in text


@pytest.mark.parametrize(
    "env",
    [
        {"TRUSTED_PROXY_CIDRS": "10.0.0.0/8; real_ip_header X-Evil"},
        {"TRUSTED_PROXY_CIDRS": "0.0.0.0/0 }"},
        {"AUTH_PROXY_ADDRESSES": "10.0.0.1; allow all"},
        {"AUTH_PROXY_HEADER": "X-User;"},
        {"TLS": "yes"},
        {"TLS": "1", "HTTPS_PORT": "84x3"},
    ],
)
def test_bad_identity_or_tls_settings_stop_the_start(env):
    done = render(**env)
    assert done.returncode == 2 and done.stdout == ""


def test_tls_moves_the_app_to_8443_and_redirects_plain_http():
    plain = render().stdout
    assert "8443" not in "\n".join(config_lines(plain))
    text = render(TLS="1", HTTPS_PORT="18443").stdout
    servers = [body for name, body in blocks(text) if name == "server"]
    assert len(servers) == 2
    redirect, app = servers
    assert "listen 8080;" in redirect and "listen 8443 ssl; include /etc/nginx/tls.conf;" in app
    assert "return 301 https://$host:18443$request_uri;" in text
    assert "return 301 https://$host$request_uri;" in render(TLS="1", HTTPS_PORT="443").stdout


def test_tls_settings_are_modern():
    tls = "\n".join(config_lines((NGINX / "tls.conf").read_text()))
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in tls
    assert "TLSv1 " not in tls and "TLSv1.1" not in tls
    assert "ssl_stapling off;" in tls
    assert "proxy_cookie_flags ~ secure;" in tls
    snippet = (NGINX / "security-headers.conf").read_text()
    assert "add_header Strict-Transport-Security $hsts always;" in snippet


def test_every_proxied_location_passes_the_request_id():
    text = render().stdout
    proxied = [body for name, body in blocks(text) if "proxy_pass $" in body]
    assert len(proxied) == 3  # /socket.io/, the API, Flower
    for body in proxied:
        assert "proxy_set_header X-Request-ID $taskbeam_request_id;" in body


def trusted_geo(text):
    geo = text.split("geo $realip_remote_addr $from_trusted_proxy {", 1)[1].split("}", 1)[0]
    return [line.strip() for line in config_lines(geo) if line.strip()]


def test_a_request_id_is_believed_only_from_a_trusted_proxy():
    assert trusted_geo(render().stdout) == ["default 0;"]
    text = render(TRUSTED_PROXY_CIDRS="10.42.0.0/16,fd00::/8").stdout
    assert trusted_geo(text) == ["default 0;", "10.42.0.0/16 1; fd00::/8 1;"]
    assert '"~^1:(?<forwarded_request_id>[A-Za-z0-9._-]{1,64})$"' in text
    assert re.search(r"default\s+\$request_id;", text)


def test_the_access_log_is_json_without_health_checks():
    text = "\n".join(config_lines(render().stdout))
    assert "log_format taskbeam_json escape=json" in text
    assert '"request_id":"$taskbeam_request_id"' in text
    (access_log,) = re.findall(r"access_log /dev/stdout [^;]*;", text)
    assert access_log == "access_log /dev/stdout taskbeam_json if=$taskbeam_loggable;"
    assert "~^/(healthz|readyz|nginx-health)$ 0;" in text
