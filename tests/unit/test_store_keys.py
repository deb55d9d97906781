"""Every Redis key and channel name (taskbeam/store/keys.py): the names a deployed
Redis already holds, and the one place that builds them."""

import ast
import pathlib

import taskbeam
from taskbeam import broker, config
from taskbeam.store import Keys

KEYS = Keys("t")


def test_the_names_are_the_ones_a_running_deployment_holds():
    """A renamed key orphans every task (and Celery message) in an upgraded Redis."""
    assert [KEYS.task("a"), KEYS.events("a"), KEYS.owner("o"), KEYS.owner_active("o")] == [
        "t:task:a",
        "t:task:a:events",
        "t:owner:o",
        "t:owner:o:active",
    ]
    assert [KEYS.active, KEYS.queued, KEYS.leases, KEYS.workers, KEYS.main_only] == [
        "t:active",
        "t:queued",
        "t:leases",
        "t:workers",
        "t:socketio:main-only",
    ]
    assert [KEYS.sweeper, KEYS.rate("o", 7), KEYS.rate_ip("10.0.0.1", 7)] == [
        "t:sweeper",
        "t:rate:o:7",
        "t:rate-ip:10.0.0.1:7",
    ]
    assert [KEYS.celery_prefix, KEYS.socketio_channel] == ["t:celery:", "t:socketio"]


def test_the_settings_and_the_broker_take_their_names_from_here():
    settings = config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t"}, need_secret=False
    )
    assert settings.socketio_channel == KEYS.socketio_channel
    options = broker.make_celery(settings).conf.broker_transport_options
    assert options["global_keyprefix"] == KEYS.celery_prefix


def test_no_other_module_builds_a_name_from_the_namespace():
    """An f-string with the namespace followed by ':' is a key name built elsewhere."""
    package = pathlib.Path(taskbeam.__file__).parent
    found = []
    for path in package.rglob("*.py"):
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                text = ast.unparse(node)
                if "namespace}:" in text or "ns}:" in text:
                    found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert found == []
