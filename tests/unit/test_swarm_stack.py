"""deploy/swarm/stack.yml, read as written (tests/integration/test_swarm.py deploys it)."""

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
