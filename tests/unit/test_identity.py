"""AUTH_MODE (taskbeam/web/identity.py): which tokens and headers name an owner.

Each attack token is refused with the code the contract gives it (docs/api.md,
"Identity"): keys are real (cryptography), tokens are minted by PyJWT or by hand
where PyJWT would refuse to make them (alg:none, a forged signature)."""

import base64
import json
import time
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, session

from taskbeam import config
from taskbeam.web import api, errors, identity

SECRET = "s3cret-key/" * 4
ISS, AUD = "https://login.example", "taskbeam"
REDIS = {"REDIS_URL": "redis://redis:6379/0", "SECRET_KEY": "k0123456789" * 4}


def settings(**env):
    return config.load({**REDIS, **env})


def hs_env(**extra):
    return {
        "AUTH_MODE": "jwt",
        "JWT_SECRET": SECRET,
        "JWT_ISSUER": ISS,
        "JWT_AUDIENCE": AUD,
        **extra,
    }


def claims(**over):
    now = int(time.time())
    base = {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header, body, signature=b""):
    head = b64(json.dumps(header).encode())
    return f"{head}.{b64(json.dumps(body).encode())}.{b64(signature)}"


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def who(env):
    return identity.Identity(settings(**env).auth)


def request_with(headers=None):
    return SimpleNamespace(headers=headers or {})


def refusal(ident, token):
    with pytest.raises(identity.Unauthenticated) as caught:
        ident.owner(request_with({"Authorization": f"Bearer {token}"}), {})
    return caught.value


# --- jwt: the good token and each attack ------------------------------------------


def test_a_valid_hs256_token_names_the_owner_by_sub():
    ident = who(hs_env())
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    owner, expires = ident.owner(request_with({"Authorization": f"Bearer {token}"}), {})
    again, _ = ident.owner(request_with(), {}, {"token": token})  # the Socket.IO payload
    other = jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256")
    assert owner == again != ident.owner(request_with(), {}, {"token": other})[0]
    assert owner.startswith("u-") and len(owner) == 34
    assert abs(expires - (claims()["exp"] + 10)) <= 2  # exp plus JWT_LEEWAY_S


ATTACKS = {
    "expired": (lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET), "token_expired"),
    "not yet valid": (
        lambda: jwt.encode(claims(nbf=int(time.time()) + 600), SECRET),
        "unauthenticated",
    ),
    "wrong audience": (lambda: jwt.encode(claims(aud="another-app"), SECRET), "unauthenticated"),
    "wrong issuer": (lambda: jwt.encode(claims(iss="https://evil"), SECRET), "unauthenticated"),
    "wrong signature": (lambda: jwt.encode(claims(), "x" * 64), "unauthenticated"),
    "no exp": (lambda: jwt.encode(claims(exp=None), SECRET), "unauthenticated"),
    "no sub": (lambda: jwt.encode(claims(sub=None), SECRET), "unauthenticated"),
    "sub not a string": (lambda: jwt.encode(claims(sub=42), SECRET), "unauthenticated"),
    "alg none": (lambda: unsigned({"alg": "none", "typ": "JWT"}, claims()), "unauthenticated"),
    "alg None, HS signature stripped": (
        lambda: jwt.encode(claims(), SECRET).rsplit(".", 1)[0] + ".",
        "unauthenticated",
    ),
    "garbage": (lambda: "not.a.token", "unauthenticated"),
    "oversized": (lambda: "a" * 9000, "unauthenticated"),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_tokens_are_refused_with_their_code(name):
    make, code = ATTACKS[name]
    exc = refusal(who(hs_env()), make())
    assert exc.code == code, exc.message
    assert exc.challenge.startswith('Bearer realm="taskbeam", error="invalid_token"')


def test_no_credentials_is_unauthenticated_with_a_bearer_challenge():
    ident = who(hs_env())
    for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer "}):
        with pytest.raises(identity.Unauthenticated) as caught:
            ident.owner(request_with(headers), {})
        assert caught.value.code == "unauthenticated"
        assert caught.value.challenge == 'Bearer realm="taskbeam"'


def test_rs256_accepts_its_key_and_refuses_hs_confusion_and_hs_tokens(tmp_path, rsa_key):
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(rsa_key))
    ident = who(
        {
            "AUTH_MODE": "jwt",
            "JWT_ALGORITHM": "RS256",
            "JWT_PUBLIC_KEY_FILE": str(pem),
            "JWT_ISSUER": ISS,
            "JWT_AUDIENCE": AUD,
        }
    )
    good = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert ident.owner(request_with(), {}, {"token": good})[0].startswith("u-")
    # The classic confusion: HMAC keyed with the public key the server holds. PyJWT
    # refuses to mint it, so the signature is made by hand.
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(pem.read_bytes(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert refusal(ident, f"{header}.{body}.{b64(mac)}").code == "unauthenticated"
    assert refusal(ident, jwt.encode(claims(), SECRET, algorithm="HS256")).code == (
        "unauthenticated"
    )
    assert refusal(ident, unsigned({"alg": "none"}, claims())).code == "unauthenticated"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refusal(ident, jwt.encode(claims(), other, algorithm="RS256")).code == "unauthenticated"


def test_es256_from_a_jwks_file_picks_the_key_by_kid(tmp_path, ec_key):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}))
    ident = who(
        {
            "AUTH_MODE": "jwt",
            "JWT_ALGORITHM": "ES256",
            "JWT_JWKS_FILE": str(jwks),
            "JWT_ISSUER": ISS,
            "JWT_AUDIENCE": AUD,
        }
    )
    good = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k1"})
    assert ident.owner(request_with(), {}, {"token": good})[0].startswith("u-")
    unknown = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k2"})
    assert refusal(ident, unknown).code == "unauthenticated"
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "k1"})
    assert refusal(ident, forged).code == "unauthenticated"


def test_a_kid_of_another_key_type_is_401_not_500(tmp_path, rsa_key, ec_key):
    """ES256 with a JWKS of RSA and EC keys: a token naming the RSA key's kid
    made PyJWT raise TypeError (a 500); it is a refused token."""
    keys = [
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec"},
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa"},
    ]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": keys}))
    ident = who(
        {
            "AUTH_MODE": "jwt",
            "JWT_ALGORITHM": "ES256",
            "JWT_JWKS_FILE": str(jwks),
            "JWT_ISSUER": ISS,
            "JWT_AUDIENCE": AUD,
        }
    )
    crafted = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa"})
    assert refusal(ident, crafted).code == "unauthenticated"
    good = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec"})
    assert ident.owner(request_with(), {}, {"token": good})[0].startswith("u-")


def test_a_sub_cannot_name_another_owners_redis_keys():
    ident = who(hs_env())
    tokens = [jwt.encode(claims(sub=s), SECRET) for s in ("bob", "bob:active")]
    owners = {ident.owner(request_with(), {}, {"token": t})[0] for t in tokens}
    assert len(owners) == 2 and all(":" not in o for o in owners)


# --- header and app-hook modes, session unchanged -------------------------------------


def test_header_mode_reads_only_the_nginx_header():
    ident = who({"AUTH_MODE": "header"})
    owner, _ = ident.owner(request_with({"X-Taskbeam-User": "alice"}), {})
    assert owner == ident.owner(request_with({"X-Taskbeam-User": "alice"}), {})[0]
    for headers in ({}, {"X-Auth-Request-User": "alice"}, {"X-Taskbeam-User": ""}):
        with pytest.raises(identity.Unauthenticated):
            ident.owner(request_with(headers), {})


def test_app_hook_names_the_owner_and_none_is_unauthenticated():
    ident = identity.Identity(settings().auth, owner_of=lambda r: r.headers.get("user"))
    assert ident.owner(request_with({"user": "7"}), {})[0].startswith("u-")
    with pytest.raises(identity.Unauthenticated):
        ident.owner(request_with(), {})


def test_session_mode_is_the_cookie_owner():
    assert who({}).owner(request_with(), {"owner": "abc"}) == ("abc", None)


@pytest.mark.parametrize(
    "env",
    [
        {"AUTH_MODE": "ldap"},
        {"AUTH_MODE": "jwt", "JWT_SECRET": SECRET, "JWT_ISSUER": ISS},  # no audience
        {"AUTH_MODE": "jwt", "JWT_SECRET": "short", "JWT_ISSUER": ISS, "JWT_AUDIENCE": AUD},
        hs_env(JWT_ALGORITHM="none"),
        hs_env(JWT_ALGORITHM="RS256"),  # a secret, no key
        {"AUTH_DEV_LOGIN": "1"},
    ],
)
def test_bad_auth_settings_stop_the_start(env):
    with pytest.raises(config.ConfigError):
        settings(**env)


# --- REST: 401 in the contract's shape ------------------------------------------


def rest_client(env):
    s = settings(**env)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=s.secret_key)
    store = SimpleNamespace(
        list_for_owner=lambda owner: [{"owner": owner}],
        add_queue_positions=lambda tasks: tasks,
        owned_record=lambda task_id, owner: None,
    )
    app.extensions["taskbeam"] = SimpleNamespace(
        settings=s, store=store, identity=identity.Identity(s.auth)
    )

    @app.before_request
    def owner():
        session.setdefault("owner", "cookie-owner")

    app.register_blueprint(api.bp)
    errors.register_error_handlers(app)
    return app.test_client()


def test_rest_without_credentials_is_401_with_www_authenticate():
    client = rest_client(hs_env())
    for method, path in (("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/api/tasks/x")):
        response = client.open(path, method=method)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="taskbeam"'
    expired = jwt.encode(claims(exp=int(time.time()) - 60), SECRET)
    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and response.json["error"]["code"] == "token_expired"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    good = jwt.encode(claims(), SECRET)
    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {good}"})
    assert response.status_code == 200 and response.json["tasks"][0]["owner"].startswith("u-")


def test_rest_in_session_mode_is_unchanged():
    response = rest_client({}).get("/api/tasks")
    assert response.status_code == 200 and response.json["tasks"][0]["owner"] == "cookie-owner"


# --- the CONNECT auth payload reaches the connect handler on both transports -----------


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fast", [True, False])
def test_the_connect_auth_payload_reaches_the_handler_on_both_transports(fast):
    """AUTH_MODE=jwt reads the token there: WEB_FAST_TRANSPORT=1 and =0 alike."""
    import socketio
    from test_fastws_contract import Server, in_thread, wait_for

    server = Server(fast=fast, ping_interval=5, ping_timeout=5)
    seen = []
    server.sio.on("connect", lambda sid, environ, auth: seen.append(auth))
    client = socketio.Client(reconnection=False)
    url = f"http://127.0.0.1:{server.port}"
    in_thread(lambda: client.connect(url, transports=["websocket"], auth={"token": "t0k"}))
    try:
        wait_for(lambda: seen)
        assert seen == [{"token": "t0k"}]
    finally:
        in_thread(client.disconnect)
        server.stop()
