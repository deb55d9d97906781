"""The contract's JSON errors (docs/api.md): ``{"error": {"code", "message"}}``.

:class:`ApiError` is what a route raises; :func:`register_error_handlers` makes every
error of an app (Werkzeug's own, a refused quota, Redis down, a bug) that JSON, never
a stack trace.
"""

import logging

from flask import jsonify
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from .. import quotas

log = logging.getLogger(__name__)

# snake_case codes for the HTTP errors Werkzeug raises on its own.
HTTP_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status, code, message, headers=None):
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app):
    @app.errorhandler(ApiError)
    def api_error(exc):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(quotas.Refused)
    def quota_refused(exc):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        code = HTTP_CODES.get(exc.code, "http_error")
        return error_response(exc.code, code, exc.description or exc.name)

    @app.errorhandler(RedisError)
    def redis_error(exc):
        log.warning("Redis error: %s", exc)
        return error_response(503, "unavailable", "Storage is unavailable; try again.")

    @app.errorhandler(Exception)
    def internal_error(exc):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
