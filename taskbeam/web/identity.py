"""Who owns a task: one resolver per AUTH_MODE, chosen once at start.

- ``session`` (default): the signed session cookie's random ``owner`` (set in
  ``create_app``), as before this module existed.
- ``jwt``: ``Authorization: Bearer <token>`` on REST, ``auth: {"token": ...}`` in the
  Socket.IO CONNECT packet. PyJWT checks the signature with the one configured
  algorithm (never the one the token names), ``exp`` (required), ``nbf``, ``iss`` and
  ``aud``; the owner is ``sub``.
- ``header``: ``X-Taskbeam-User``, which Nginx always sets itself: to the auth proxy's
  header when the request came from an AUTH_PROXY_ADDRESSES address, else to nothing
  (a client's copy never reaches the app). The web container is reachable only from
  the Compose network, so that hop is the trust boundary.
- an app hook: ``create_app(owner_of=f)`` with ``f(request) -> str | None`` (e.g. from
  Flask-Login's ``current_user``); None means not signed in.

Users become owner ids through a hash: ``sub`` strings of any content never name a
Redis key of their own (a ``sub`` of ``"bob:active"`` cannot reach bob's keys), and
every id has the same bounded length.
"""

import json
import time

from ..protocol import owner_id, owner_room  # noqa: F401  (owner_room: identity.owner_room)

# Nginx sets it (nginx/nginx.conf); a client's copy is replaced there.
PROXY_HEADER = "X-Taskbeam-User"
MAX_TOKEN_BYTES = 8192
MAX_USER_CHARS = 255
REALM = 'realm="taskbeam"'


class Unauthenticated(Exception):
    """No usable credentials: 401 ``unauthenticated`` or ``token_expired``."""

    def __init__(self, code, message, challenge):
        super().__init__(message)
        self.code, self.message, self.challenge = code, message, challenge


def _user_name(value, what):
    if not isinstance(value, str) or not value or len(value) > MAX_USER_CHARS:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_USER_CHARS} chars")
    return value


class JwtVerifier:
    """Checks tokens against one key and one algorithm, both from the settings.

    PyJWT is imported here, after Gunicorn's gevent monkey-patching (gunicorn.conf.py
    imports this package first; PyJWT's JWKS client imports ``ssl``)."""

    def __init__(self, auth):
        import jwt

        self.jwt = jwt
        self.algorithm = auth.jwt_algorithm
        self.issuer, self.audience, self.leeway = (
            auth.jwt_issuer,
            auth.jwt_audience,
            auth.jwt_leeway_s,
        )
        self.key, self.jwks = None, None
        if auth.jwt_algorithm == "HS256":
            self.key = auth.jwt_secret
        elif auth.jwt_public_key_file:
            with open(auth.jwt_public_key_file, encoding="utf-8") as f:
                self.key = jwt.get_algorithm_by_name(self.algorithm).prepare_key(f.read())
        else:
            with open(auth.jwt_jwks_file, encoding="utf-8") as f:
                self.jwks = jwt.PyJWKSet.from_json(f.read())

    def _key_for(self, token):
        jwt = self.jwt
        if self.jwks is None:
            return self.key
        kid = jwt.get_unverified_header(token).get("kid")
        try:
            return self.jwks[kid].key
        except KeyError:
            raise jwt.InvalidTokenError("no key in the JWKS file has this token's kid") from None

    def claims(self, token):
        """The verified claims of ``token``; raises :class:`Unauthenticated`."""
        if not isinstance(token, str) or not token:
            raise Unauthenticated(
                "unauthenticated", "Send a token: Bearer <JWT>.", self.challenge()
            )
        if len(token) > MAX_TOKEN_BYTES:
            raise self._refused("unauthenticated", "The token is too long.")
        jwt = self.jwt
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
            _user_name(claims["sub"], "sub")
        except jwt.ExpiredSignatureError:
            raise self._refused("token_expired", "The token has expired; get a new one.") from None
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise self._refused("unauthenticated", f"The token was refused: {exc}") from None
        return claims

    def challenge(self, error=None, description=None):
        if error is None:
            return f"Bearer {REALM}"
        description = description.replace('"', "'")
        return f'Bearer {REALM}, error="{error}", error_description="{description}"'

    def _refused(self, code, message):
        return Unauthenticated(code, message, self.challenge("invalid_token", message))

    def mint(self, user, ttl_s):
        """A token for the dev login (AUTH_DEV_LOGIN=1, HS256 only)."""
        now = int(time.time())
        claims = {"sub": user, "iss": self.issuer, "aud": self.audience, "iat": now}
        claims["exp"] = now + ttl_s
        return self.jwt.encode(claims, self.key, algorithm=self.algorithm)


class Identity:
    """``owner(request, auth)``: the owner id and when its credentials expire (or None)."""

    def __init__(self, auth, owner_of=None):
        self.mode = "app" if owner_of is not None else auth.mode
        self.owner_of = owner_of
        self.verifier = JwtVerifier(auth) if self.mode == "jwt" else None
        self.dev_login = auth.dev_login and self.mode == "jwt"

    def owner(self, request, session, auth=None):
        """For REST ``auth`` is None; for a Socket.IO connect it is the CONNECT payload."""
        if self.mode == "session":
            return session.get("owner"), None
        if self.mode == "jwt":
            token = auth.get("token") if isinstance(auth, dict) else None
            if token is None:
                token = _bearer(request.headers.get("Authorization", ""))
            claims = self.verifier.claims(token)
            # The socket lives as long as REST would accept the token: exp plus the leeway.
            expires_at = claims["exp"] + self.verifier.leeway
            return owner_id("jwt", json.dumps([claims["iss"], claims["sub"]])), expires_at
        if self.mode == "header":
            user = request.headers.get(PROXY_HEADER, "")
            if not user or len(user) > MAX_USER_CHARS:
                raise Unauthenticated(
                    "unauthenticated", "Sign in through the login proxy.", f"Proxy {REALM}"
                )
            return owner_id("header", user), None
        user = self.owner_of(request)
        if user is None:
            raise Unauthenticated("unauthenticated", "Sign in first.", f"Session {REALM}")
        return owner_id("app", _user_name(str(user), "owner_of(request)")), None


def _bearer(value):
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
