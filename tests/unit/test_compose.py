"""docker-compose.yml and its overlays, read as written (the stack tests run them)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def services(path="docker-compose.yml"):
    return yaml.safe_load((ROOT / path).read_text())["services"]


def test_web_never_gets_the_database_url():
    for path in ("docker-compose.yml", "postgres/compose.yml", "redis/ha.yml"):
        web = services(path).get("web", {})
        environment = web.get("environment", {})
        assert "DATABASE_URL" not in environment, path
    assert "DATABASE_URL" in services()["worker"]["environment"]


def test_web_shares_a_network_with_nginx_and_nothing_else_does():
    found = {name: set(s.get("networks", ["default"])) for name, s in services().items()}
    front = {name for name, networks in found.items() if "front" in networks}
    # Flower and Prometheus (the monitoring profile): Nginx serves Flower; Prometheus
    # scrapes web's /metrics, which Gunicorn serves on the front network only.
    assert front == {"nginx", "web", "flower", "prometheus"}
    assert found["prometheus"] == {"front"}
    assert found["nginx"] == {"front"} and found["worker"] == {"back"}
    assert found["redis"] == {"back"}
    # web listens on the front network's interface (web/gunicorn.conf.py) only.
    assert services()["web"]["environment"]["WEB_LISTEN_INTERFACE"] == "front0"
