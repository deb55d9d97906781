"""deploy/swarm/stack.yml, read as written (tests/integration/test_swarm.py deploys it)."""

import ipaddress
from pathlib import Path

import yaml

STACK = Path(__file__).resolve().parents[2] / "deploy" / "swarm" / "stack.yml"


def test_every_service_is_on_an_overlay():
    # Not encrypted by default: where IPsec ESP is dropped (engines nested in containers,
    # as in CI) the nodes could not reach each other at all; the stack says how.
    stack = yaml.safe_load(STACK.read_text())
    networks = stack.get("networks", {})
    for name, service in stack["services"].items():
        for network in service.get("networks", ["default"]):
            spec = networks.get(network) or {}
            assert spec.get("driver") == "overlay", f"{name}: {network} is not an overlay"


def test_web_has_no_database_url():
    services = yaml.safe_load(STACK.read_text())["services"]
    assert "DATABASE_URL" not in services["web"]["environment"]
    assert "DATABASE_URL" in services["worker"]["environment"]


def services():
    return yaml.safe_load(STACK.read_text())["services"]


def test_only_nginx_shares_a_network_with_webs_listening_address():
    # As in docker-compose.yml: front holds Nginx and web, back web, workers and Redis;
    # web listens on its front address only (Swarm names interfaces ethN: by subnet).
    stack = yaml.safe_load(STACK.read_text())
    found = {name: set(s.get("networks", ["default"])) for name, s in stack["services"].items()}
    assert found == {
        "nginx": {"front"},
        "web": {"front", "back"},
        "worker": {"back"},
        "redis": {"back"},
    }
    (front,) = stack["networks"]["front"]["ipam"]["config"]
    subnet = front["subnet"]
    assert subnet.startswith("${FRONT_SUBNET:-")
    listen = stack["services"]["web"]["environment"]["WEB_LISTEN_INTERFACE"]
    assert listen == subnet
    ipaddress.ip_network(subnet.removeprefix("${FRONT_SUBNET:-").removesuffix("}"))


def test_each_role_has_its_own_redis_user_and_secret():
    found = services()
    for role in ("web", "worker"):
        env = found[role]["environment"]
        assert env["REDIS_URL"] == f"redis://{role}@redis:6379/0"
        secret = f"redis_{role}_password"
        assert env["REDIS_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        assert secret in found[role]["secrets"]
        assert "redis_password" not in found[role]["secrets"]
    assert "secret_key" not in found["worker"]["secrets"]
    redis = found["redis"]
    assert set(redis["secrets"]) == {
        "redis_password",
        "redis_web_password",
        "redis_worker_password",
    }
    # redis/start.sh makes the users, reading each password from its secret's file.
    for name in ("REDIS_PASSWORD", "REDIS_WEB_PASSWORD", "REDIS_WORKER_PASSWORD"):
        assert redis["environment"][f"{name}_FILE"] == f"/run/secrets/{name.lower()}"
    assert "start.sh" in " ".join(redis["command"])
