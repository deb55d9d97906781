"""The WSGI layers in front of the Flask app (and of Socket.IO's handshake).

- :func:`trust_nginx`: X-Forwarded-For/-Proto are believed for exactly one hop, the
  Nginx in front, which appends the address it saw. A client's own entries sit to
  the left of it and are ignored, so ``request.remote_addr`` (the per-IP rate limit's
  key) cannot be forged through Nginx.
- :class:`HostCheck`: requests for a Host that is not ours get 421. DNS rebinding
  points an attacker's domain at this server; the browser then sends that domain as
  Host *and* as Origin, which the Origin check alone would take for our own origin.
- :func:`origin_allowed`: the Origin check itself, of the API's state-changing
  requests and of Socket.IO's handshake.
- :func:`request_ids`: each request's id for the log lines (and its task's), Nginx's
  ``X-Request-ID`` where the app trusts it.
"""

import ipaddress
import json
from urllib.parse import urlsplit

from flask import request
from werkzeug.middleware.proxy_fix import ProxyFix

from .. import observability

# Always served: loopback names and the Compose service name other containers use.
# IP literals are always allowed too: a rebinding attack needs a domain name.
DEFAULT_HOSTS = ("localhost", "web")

_MISDIRECTED = json.dumps(
    {
        "error": {
            "code": "misdirected_request",
            "message": "This server does not answer for that host name; add it to ALLOWED_HOSTS.",
        }
    }
).encode()


def trust_nginx(wsgi_app):
    return ProxyFix(wsgi_app, x_for=1, x_proto=1)


def request_ids(app):
    """Bind each request's id for its log lines and answer it in ``X-Request-ID``.

    The incoming ``X-Request-ID`` is believed only where the app trusts its proxy as
    it does for X-Forwarded-For (``TASKBEAM_TRUST_REQUEST_ID``: :func:`create_app` sets
    it, for the Nginx in front, which sets the header on every request); an app of
    your own (the extension) makes its own ids unless it sets the flag.
    """

    @app.before_request
    def bind_request_id():
        incoming = None
        if app.config.get("TASKBEAM_TRUST_REQUEST_ID"):
            incoming = request.headers.get("X-Request-ID")
        observability.bind(request_id=observability.request_id(incoming))

    @app.after_request
    def answer_request_id(response):
        rid = observability.current().get("request_id")
        if rid is not None:
            response.headers["X-Request-ID"] = rid
        return response

    @app.teardown_request
    def unbind_request_id(_exc):
        # A keep-alive connection's next request runs in the same greenlet.
        observability.clear()


def host_allowed(host_header, allowed):
    """True for a Host header naming localhost, an IP address or a host in ``allowed``."""
    if "*" in allowed:
        return True
    try:
        name = urlsplit(f"//{host_header}").hostname
    except ValueError:
        return False
    if not name:
        return False
    if name in DEFAULT_HOSTS or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """WSGI middleware: 421 ``misdirected_request`` unless the Host is allowed.

    A request without a Host header (HTTP/1.0, e.g. the container's healthcheck)
    passes: browsers always send one.
    """

    def __init__(self, wsgi_app, settings):
        self.wsgi_app = wsgi_app
        self.allowed = frozenset(settings.allowed_hosts)

    def __call__(self, environ, start_response):
        host = environ.get("HTTP_HOST")
        if host is None or host_allowed(host, self.allowed):
            return self.wsgi_app(environ, start_response)
        start_response(
            "421 Misdirected Request",
            [("Content-Type", "application/json"), ("Content-Length", str(len(_MISDIRECTED)))],
        )
        return [_MISDIRECTED]


def own_origin():
    """``scheme://host[:port]`` of the current request as the browser sees it."""
    return f"{request.scheme}://{request.host}"


def origin_allowed(origin, settings, own):
    """True if ``origin`` may talk to us: our own origin or one in ALLOWED_ORIGINS."""
    origin = (origin or "").rstrip("/")
    parts = urlsplit(origin)
    return bool(parts.scheme and parts.netloc) and (
        origin == own or origin in settings.allowed_origins
    )
