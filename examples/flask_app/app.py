"""A Flask app of a team's own: its own login (Flask-Login) decides who owns a task,
and the Taskbeam extension adds the task API and live progress to it.

Run it as Taskbeam's ``web`` runs, with the same Gunicorn settings and worker class::

    gunicorn --config web/gunicorn.conf.py 'examples.flask_app.app:create_app()'

Its own endpoints (JSON): ``POST /login`` ``{"user", "password"}``, ``POST /logout``,
``GET /me``, and ``POST /reports``, which starts this app's ``report`` job
(examples/flask_app/jobs.py) for the signed-in user with ``taskbeam.submit()``. The
extension adds docs/api.md (``/api/tasks`` and the rest) and the Socket.IO events,
each for the signed-in user only.
"""

import os

from flask import Blueprint, Flask, current_app, jsonify, request, url_for
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from flask_socketio import SocketIO
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

import taskbeam

# Signs this app's session cookie, where Flask-Login keeps the user (Taskbeam needs it too).
SECRET_KEY = os.environ.get("SECRET_KEY", "")
# Not the name of Taskbeam's page's cookie: browsers share cookies across ports.
SESSION_COOKIE_NAME = "example_session"
# 1 behind TLS: the session cookie never travels over plain HTTP.
SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "0") == "1"
# Larger request bodies get 413, here and in Taskbeam's API (which reads whole JSON bodies).
MAX_CONTENT_LENGTH = 1024 * 1024
# The demo users and the variables with their passwords (unset: that user cannot sign in).
PASSWORD_VARIABLES = {"alice": "EXAMPLE_ALICE_PASSWORD", "bob": "EXAMPLE_BOB_PASSWORD"}
# Longer names or passwords are refused before any hashing.
MAX_CREDENTIAL_CHARS = 256
# Taskbeam's own settings (REDIS_URL, TASKBEAM_NAMESPACE, JOBS_MODULES, MAX_ACTIVE_TASKS)
# come from the environment as for its `web`: docs/configuration.md.

socketio = SocketIO()
login_manager = LoginManager()
bp = Blueprint("example", __name__)


class User(UserMixin):
    def __init__(self, name):
        self.id = name


class Refused(Exception):
    """An answer in the contract's error shape, ``{"error": {"code", "message"}}``."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status, code, message):
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Session realm="example"'
    return response


def password_hashes(env):
    """``{user: hash}`` of the demo users whose password is set in ``env``."""
    return {
        user: generate_password_hash(env[variable])
        for user, variable in PASSWORD_VARIABLES.items()
        if env.get(variable)
    }


def owner_of(request):
    """Who owns the request's tasks: the signed-in user, or None (401)."""
    return current_user.get_id() if current_user.is_authenticated else None


def create_app():
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY=SECRET_KEY,
        SESSION_COOKIE_NAME=SESSION_COOKIE_NAME,
        SESSION_COOKIE_SECURE=SESSION_COOKIE_SECURE,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        USER_PASSWORD_HASHES=password_hashes(os.environ),
        # Checked for an unknown user too, so a wrong name costs as long as a wrong password.
        UNKNOWN_USER_HASH=generate_password_hash(os.urandom(16).hex()),
    )
    login_manager.init_app(app)
    # The API and Socket.IO handlers in this app and `socketio`, owned by our own login.
    taskbeam.Taskbeam(app, socketio, owner_of=owner_of)
    app.register_blueprint(bp)
    app.register_error_handler(Refused, lambda e: error_response(e.status, e.code, e.message))
    app.register_error_handler(
        HTTPException,
        lambda e: error_response(e.code, e.name.lower().replace(" ", "_"), e.description),
    )
    return app


@login_manager.user_loader
def load_user(name):
    return User(name) if name in current_app.config["USER_PASSWORD_HASHES"] else None


@login_manager.unauthorized_handler
def unauthorized():
    raise Refused(401, "unauthenticated", "Sign in first: POST /login.")


def json_body():
    """The request's JSON object; 415 or 400 otherwise (a form cannot post JSON cross-site)."""
    if request.mimetype != "application/json":
        raise Refused(415, "unsupported_media_type", "Send the body as application/json.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Refused(400, "invalid_json", "The body must be a JSON object.")
    return body


@bp.post("/login")
def login():
    body = json_body()
    user, password = body.get("user"), body.get("password")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_CREDENTIAL_CHARS for v in (user, password)):
        raise Refused(400, "invalid_params", "user and password: non-empty strings")
    stored = current_app.config["USER_PASSWORD_HASHES"].get(user)
    matches = check_password_hash(stored or current_app.config["UNKNOWN_USER_HASH"], password)
    if stored is None or not matches:
        raise Refused(401, "unauthenticated", "Wrong user name or password.")
    login_user(User(user))
    return {"user": user}


@bp.post("/logout")
def logout():
    logout_user()
    return "", 204


@bp.get("/me")
@login_required
def me():
    return {"user": current_user.get_id()}


@bp.post("/reports")
@login_required
def start_report():
    """Start this app's ``report`` job for the signed-in user; its snapshot, as the API's."""
    try:
        snapshot = taskbeam.submit("report", json_body(), owner=current_user.get_id())
    except taskbeam.ParamError as exc:
        raise Refused(400, "invalid_params", str(exc)) from None
    except taskbeam.TooManyActive as exc:
        raise Refused(429, "too_many_active", f"At most {exc.limit} unfinished tasks.") from None
    except taskbeam.QueueUnavailable as exc:
        raise Refused(503, "unavailable", str(exc)) from None
    response = jsonify(snapshot)
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_task", task_id=snapshot["id"])
    return response
