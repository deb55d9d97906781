"""The Kubernetes manifests (deploy/kubernetes), checked offline: every overlay renders
with kubectl's kustomize, every object validates against the Kubernetes schemas
(kubernetes-validate bundles them), and the manifests agree with docker-compose.yml
on images, commands, ports, settings, probes and the read-only root filesystem.

No cluster runs here: what a cluster would add (scheduling, the storage class, the
Ingress controller, KEDA itself) is not proven by these tests.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from test_sentinel import ROLE_ENV, Server, shipped_redis

import redis as redis_lib
from taskbeam import broker, config

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("base", "production")
# The oldest Kubernetes the manifests target, and the newest the validator knows.
VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Kinds that come from add-ons (KEDA): no schema offline, checked field by field below.
ADD_ON_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Compose settings that Kubernetes gets another way: from the Secret's files.
FROM_SECRET_FILES = {"SECRET_KEY": "SECRET_KEY_FILE", "JWT_SECRET": "JWT_SECRET_FILE"}
# Compose wiring a pod does not need: web's interface on the front network (a pod has
# one interface; the NetworkPolicies keep everyone but Nginx away from it).
COMPOSE_ONLY = {"WEB_LISTEN_INTERFACE"}


def kubectl():
    """kubectl, whose built-in kustomize renders the overlays (.ci/provision.sh
    installs Debian's when there is none)."""
    path = shutil.which("kubectl")
    if path:
        return path
    # CI sets this: there the manifests must really be rendered, not skipped.
    if os.environ.get("TASKBEAM_REQUIRE_KUBECTL") == "1":
        pytest.fail("kubectl is required here (TASKBEAM_REQUIRE_KUBECTL=1)")
    pytest.skip("kubectl is not installed: the overlays were not rendered")


def render(overlay):
    out = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return render(request.param)


@pytest.fixture(scope="module")
def base():
    """The base's files as written (no kubectl needed)."""
    docs = []
    for path in sorted((KUBERNETES / "base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def one(docs, kind, name):
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(docs, name):
    kind = "StatefulSet" if name == "redis" else "Deployment"
    (found,) = one(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    return found


def default_of(value):
    """``${NAME:-default}`` -> default; a literal stays as it is."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
    return match.group(1) if match else str(value)


def config_map(docs, name="taskbeam-config"):
    return one(docs, "ConfigMap", name)["data"]


# --- rendering and schemas --------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_of_every_overlay_validates_against_the_schemas(rendered, version):
    checked = 0
    for doc in rendered:
        if doc["kind"] in ADD_ON_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 13


def test_the_validator_refuses_a_misspelt_field(base):
    deployment = one(base, "Deployment", "web")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_production_adds_its_namespace_images_and_replicas(rendered):
    if not any(d["kind"] == "Ingress" for d in rendered):
        pytest.skip("the base overlay")
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {
        "taskbeam"
    }
    for name in ("web", "worker", "nginx"):
        assert one(rendered, "Deployment", name)["spec"]["replicas"] >= 2
        assert container(rendered, name)["image"].startswith("registry.example.com/")
    settings = config_map(rendered)
    assert settings["SESSION_COOKIE_SECURE"] == "1"
    host = one(rendered, "Ingress", "taskbeam")["spec"]["rules"][0]["host"]
    assert settings["ALLOWED_ORIGINS"] == f"https://{host}"


# --- agreement with docker-compose.yml ----------------------------------------------


def test_images_commands_and_ports_are_the_compose_ones(base, compose):
    for name in ("web", "worker", "nginx"):
        image = container(base, name)["image"]
        assert image.split(":")[0] == compose[name]["image"].split(":")[0]
    assert container(base, "redis")["image"] == default_of(compose["redis"]["image"])
    for name in ("web", "worker"):
        assert container(base, name)["command"] == compose[name]["command"]
    nginx_port = int(compose["nginx"]["ports"][0].rsplit(":", 1)[1])
    assert container(base, "nginx")["ports"][0]["containerPort"] == nginx_port
    assert container(base, "web")["ports"][0]["containerPort"] == 8000
    assert "set $web http://${WEB_UPSTREAM}:8000;" in (ROOT / "nginx" / "nginx.conf").read_text()
    nginx_env = {e["name"]: e.get("value") for e in container(base, "nginx")["env"]}
    assert nginx_env["WEB_UPSTREAM"] == "web.$(POD_NAMESPACE).svc.cluster.local"


def test_every_compose_setting_is_set_with_the_same_default(base, compose):
    for service in ("web", "worker"):
        own = {e["name"]: e.get("value") for e in container(base, service).get("env", [])}
        settings = {**config_map(base), **own}
        for name, value in compose[service]["environment"].items():
            if name in COMPOSE_ONLY:
                continue
            name = FROM_SECRET_FILES.get(name, name)
            assert name in settings, f"{service}: {name} is not in the ConfigMap"
            if name == "REDIS_URL":  # the same user; its password from REDIS_PASSWORD_FILE
                assert settings[name] == re.sub(r":\$\{[^}]+\}@", "@", value)
            elif not name.endswith("_FILE"):
                assert settings[name] == default_of(value), name
    nginx = config_map(base, "taskbeam-nginx")
    assert nginx == {k: default_of(v) for k, v in compose["nginx"]["environment"].items()}


# The Secret's keys each pod may read: its own Redis user's password, never the
# default (superuser) one, which only Redis itself gets.
OWN_SECRETS = {
    "web": {"secret-key", "redis-web-password", "jwt-secret"},
    "worker": {"redis-worker-password"},
}


def secret_keys(docs, name):
    """The keys of a Secret a pod's container can read (a whole Secret: ``*``)."""
    pod = one(docs, "Deployment", name)["spec"]["template"]["spec"]
    keys = set()
    for volume in pod.get("volumes", []):
        sources = [volume] if "secret" in volume else volume.get("projected", {}).get("sources", [])
        for source in sources:
            if "secret" in source:
                items = source["secret"].get("items")
                keys |= {i["key"] for i in items} if items else {"*"}
    (c,) = pod["containers"]
    keys |= {"*" for e in c.get("envFrom", []) if "secretRef" in e}
    keys |= {e["valueFrom"]["secretKeyRef"]["key"] for e in c.get("env", []) if "valueFrom" in e}
    return keys


@pytest.mark.parametrize("name", sorted(OWN_SECRETS))
def test_each_role_gets_its_own_redis_user_not_the_superuser(base, name, tmp_path):
    assert secret_keys(base, name) == OWN_SECRETS[name]
    own = {e["name"]: e.get("value") for e in container(base, name).get("env", [])}
    settings = {**config_map(base), **own}
    (mount,) = [
        m["mountPath"] for m in container(base, name)["volumeMounts"] if m["name"] == "secrets"
    ]
    # The Secret's keys, as files, where the settings say they are.
    for variable in ("SECRET_KEY_FILE", "REDIS_PASSWORD_FILE"):
        if variable not in settings:
            continue
        assert os.path.dirname(settings[variable]) == mount
        path = tmp_path / os.path.basename(settings[variable])
        assert path.name in OWN_SECRETS[name], variable
        path.write_text("k0123456789" * 4)
        settings[variable] = str(path)
    loaded = config.load(settings, need_secret=name == "web")
    assert loaded.redis_url == f"redis://{name}:{'k0123456789' * 4}@redis:6379/0"
    if name == "web":
        assert loaded.secret_key == "k0123456789" * 4


def test_kubernetes_redis_has_the_acl_users_of_redis_start_sh(base, tmp_path):
    redis = container(base, "redis")
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in redis["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert from_secret["REDIS_PASSWORD"] == "redis-password"
    for role in ("web", "worker", "flower"):
        assert from_secret[f"REDIS_{role.upper()}_PASSWORD"] == f"redis-{role}-password"
    env = {k: v for k, v in ROLE_ENV.items() if k != "REDIS_SENTINEL_PASSWORD"}
    env |= {"PATH": os.environ["PATH"], "TASKBEAM_NAMESPACE": "taskbeam", "REDIS_MAXMEMORY": "8mb"}
    # The pod's volume is /data; Server's own arguments (port, ...) come after "$@".
    *shell, script = redis["command"]
    launcher = [*shell, script.replace("--dir /data", f"--dir {tmp_path}"), "redis"]
    ours = Server(tmp_path, launcher=launcher, env=env, password=env["REDIS_PASSWORD"])
    compose = shipped_redis(tmp_path)
    try:
        # Each user's rules as a set: Redis lists removed commands in no fixed order.
        users = [
            sorted(sorted(u.split()) for u in server.client.acl_list() if " sentinel " not in u)
            for server in (ours, compose)
        ]
        assert users[0] == users[1]
        assert len(users[0]) == 4
    finally:
        ours.stop()
        compose.stop()


def test_kedas_redis_user_may_read_the_queues_length_and_nothing_else(base, tmp_path):
    redis = container(base, "redis")
    env = {k: v for k, v in ROLE_ENV.items() if k != "REDIS_SENTINEL_PASSWORD"}
    env |= {"PATH": os.environ["PATH"], "TASKBEAM_NAMESPACE": "tb", "REDIS_MAXMEMORY": "8mb"}
    env |= {"REDIS_KEDA_USERNAME": "scaler", "REDIS_KEDA_PASSWORD": "keda-pw-0123456789"}
    *shell, script = redis["command"]
    launcher = [*shell, script.replace("--dir /data", f"--dir {tmp_path}"), "redis"]
    server = Server(tmp_path, launcher=launcher, env=env, password=env["REDIS_PASSWORD"])
    keda = redis_lib.Redis(port=server.port, username="scaler", password="keda-pw-0123456789")
    try:
        server.client.rpush("tb:celery:celery", "m1", "m2")
        server.client.set("tb:task:x", "secret")
        # What KEDA's Redis scaler sends: the key's type, then its length.
        assert keda.ping() and keda.type("tb:celery:celery") == b"list"
        assert keda.llen("tb:celery:celery") == 2
        for command in (
            ("GET", "tb:task:x"),
            ("LPOP", "tb:celery:celery"),
            ("LRANGE", "tb:celery:celery", 0, -1),
            ("LLEN", "tb:other"),
            ("SUBSCRIBE", "tb:events"),
            ("CONFIG", "GET", "maxmemory"),
            ("FLUSHALL",),
        ):
            with pytest.raises(redis_lib.exceptions.NoPermissionError):
                keda.execute_command(*command)
        with pytest.raises(redis_lib.exceptions.AuthenticationError):
            redis_lib.Redis(port=server.port, username="scaler", password="wrong").ping()
    finally:
        keda.close()
        server.stop()


def test_probes_are_the_compose_healthchecks(base, compose):
    web = container(base, "web")
    assert compose["web"]["healthcheck"]["test"] == ["CMD", "/app/web/healthcheck.sh"]
    assert "/readyz" in (ROOT / "web" / "healthcheck.sh").read_text()
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "read -r -t 10" in (ROOT / "web" / "healthcheck.sh").read_text()
    assert web["readinessProbe"]["timeoutSeconds"] == web["livenessProbe"]["timeoutSeconds"] == 10
    worker = container(base, "worker")
    assert (
        worker["livenessProbe"]["exec"]["command"] == compose["worker"]["healthcheck"]["test"][1:]
    )
    nginx = container(base, "nginx")
    assert nginx["readinessProbe"]["httpGet"]["path"] in " ".join(
        compose["nginx"]["healthcheck"]["test"]
    )
    redis = container(base, "redis")
    assert (
        redis["readinessProbe"]["exec"]["command"][-1] == compose["redis"]["healthcheck"]["test"][1]
    )


def test_redis_runs_with_the_settings_of_redis_conf(base):
    command = container(base, "redis")["command"][-1]
    for line in (ROOT / "redis" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            directive, value = line.split(None, 1)
            assert f"--{directive} {value}" in command


def test_pods_are_unprivileged_on_a_read_only_root_like_the_compose_services(base, compose):
    for name in ("web", "worker", "nginx", "redis"):
        assert compose[name]["read_only"] is True, name
        kind = "StatefulSet" if name == "redis" else "Deployment"
        pod = one(base, kind, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        (c,) = pod["containers"]
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert "resources" in c and "memory" in c["resources"]["limits"]
        writable = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
        compose_writable = set(compose[name].get("tmpfs", [])) | {
            v.split(":")[1] for v in compose[name].get("volumes", []) if not v.endswith(":ro")
        }
        assert writable == compose_writable, name


def test_every_deployment_has_a_disruption_budget(base):
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in base
        if d["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {d["metadata"]["name"] for d in base if d["kind"] == "Deployment"}


# --- autoscaling ---------------------------------------------------------------------


def test_keda_scales_the_workers_on_the_list_celery_really_uses(rendered):
    scaled = [d for d in rendered if d["kind"] == "ScaledObject"]
    if not scaled:
        pytest.skip("the base overlay has no autoscaling")
    (scaled,) = scaled
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert one(rendered, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    worker_url = {e["name"]: e.get("value") for e in container(rendered, "worker")["env"]}
    settings = config.load(
        {**config_map(rendered), "REDIS_URL": worker_url["REDIS_URL"]}, need_secret=False
    )
    app = broker.make_celery(settings)
    assert trigger["metadata"]["listName"] == broker.queue_lists(app)[0]
    namespace = scaled["metadata"]["namespace"]
    assert trigger["metadata"]["address"] == f"redis.{namespace}.svc.cluster.local:6379"
    # KEDA signs in as the Redis user `keda` makes of the same Secret keys: not as
    # the admin (`default`), whose password would let it do anything.
    auth = one(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {
        r["parameter"]: {"name": r["name"], "key": r["key"]}
        for r in auth["spec"]["secretTargetRef"]
    }
    redis_env = {
        e["name"]: {
            "name": e["valueFrom"]["secretKeyRef"]["name"],
            "key": e["valueFrom"]["secretKeyRef"]["key"],
        }
        for e in container(rendered, "redis")["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        "username": redis_env["REDIS_KEDA_USERNAME"],
        "password": redis_env["REDIS_KEDA_PASSWORD"],
    }
    hpa = one(rendered, "HorizontalPodAutoscaler", "web")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "web"


# --- NetworkPolicies: who may connect to whom ---------------------------------------


def selects(selector, labels):
    """True if a label selector (matchLabels only, as ours are) selects ``labels``."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(policies, source, target, port):
    """Whether the NetworkPolicies let ``source`` connect to ``target`` on ``port``;
    each a (namespace labels, pod labels) pair, in the policies' namespace for
    ``target`` (NetworkPolicy semantics: no policy selects the pod -> allowed; else
    any rule of any selecting policy must match both the peer and the port)."""
    own_namespace = {"kubernetes.io/metadata.name": "taskbeam"}
    selecting = [
        p["spec"]
        for p in policies
        if selects(p["spec"]["podSelector"], target[1])
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                namespace_ok = (
                    selects(peer["namespaceSelector"], source[0])
                    if "namespaceSelector" in peer
                    else source[0] == own_namespace
                )
                pod_ok = selects(peer.get("podSelector", {}), source[1])
                if namespace_ok and pod_ok:
                    return True
    return False


def pods(docs):
    """(namespace labels, pod labels) of the stack's pods, of Flower labelled as the
    policies expect, of some other pod in the namespace, and of outside pods."""
    here = {"kubernetes.io/metadata.name": "taskbeam"}
    found = {
        d["metadata"]["name"]: (here, d["spec"]["template"]["metadata"]["labels"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    found["flower"] = (here, {"app.kubernetes.io/name": "flower"})
    found["intruder"] = (here, {"app": "something-else"})
    found["ingress"] = ({"kubernetes.io/metadata.name": "ingress-nginx"}, {"app": "controller"})
    found["keda"] = ({"kubernetes.io/metadata.name": "keda"}, {"app": "keda-operator"})
    return found


def test_only_nginx_reaches_web_and_only_the_app_reaches_redis(rendered):
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    production = any(d["kind"] == "Ingress" for d in rendered)
    every = pods(rendered)
    ports = {"nginx": 8080, "web": 8000, "redis": 6379, "worker": 8000}
    allowed_from = {
        # Production: Nginx only from the Ingress controller's namespace.
        "nginx": {"ingress"} if production else set(every),
        "web": {"nginx"},
        "redis": {"web", "worker", "flower"} | ({"keda"} if production else set()),
        "worker": set(),  # nothing connects to a worker
    }
    for target, sources in allowed_from.items():
        for name, source in every.items():
            if name == target:
                continue
            expected = name in sources
            got = admitted(policies, source, every[target], ports[target])
            assert got == expected, f"{name} -> {target}:{ports[target]}: {got}, not {expected}"
    # Another port of an allowed peer stays closed (web's only port is 8000).
    assert not admitted(policies, every["nginx"], every["web"], 9000)
