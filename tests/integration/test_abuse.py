"""One client against everybody else: per-address limits and bounded reads.

Every request from the host reaches Nginx from one address (Docker's bridge), so the
abusive client runs in a throwaway container on the project's network, with an
address of its own, and the host plays the other client. The limits are the test
stack's (tests/run.sh), read from its env file.
"""

import json
import os
import subprocess
import time
from collections import Counter
from statistics import median

import requests
from conftest import (
    BASE_URL,
    TERMINAL,
    Watcher,
    compose,
    docker,
    in_network_command,
    inject_events,
    project_env,
    wait_until,
)

# Paced requests from several threads; one line of JSON: start, end, results.
FLOOD = r"""
import http.client, json, random, sys, threading, time
method, path, total, per_second = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
results, lock, start = [], threading.Lock(), time.time()

def one():
    # A spoofed X-Forwarded-For per request: only Nginx's own hop may count.
    headers = {"Host": "127.0.0.1:8080", "X-Forwarded-For": "10.%d.%d.%d" % (
        random.randrange(256), random.randrange(256), random.randrange(1, 255))}
    if body:
        headers["Content-Type"] = "application/json"
    try:
        conn = http.client.HTTPConnection("nginx", 8080, timeout=20)
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        result = [response.status, response.getheader("Retry-After"),
                  response.read().decode(errors="replace")[:300]]
        conn.close()
    except OSError as exc:
        result = [0, None, repr(exc)]
    with lock:
        results.append(result)

def run(k, n):
    for i in range(k, total, n):
        time.sleep(max(0.0, start + i / per_second - time.time()))
        one()

threads = [threading.Thread(target=run, args=(k, 8)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"start": start, "end": time.time(), "results": results}))
"""

# Opens N WebSocket handshakes and holds the ones that were accepted until stdin
# has a line; prints the status codes as soon as all were tried.
HOLD_SOCKETS = r"""
import base64, json, os, socket, sys
codes, held = [], []
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("nginx", 8080), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
               "Host: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    code = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    codes.append(code)
    if code == 101:
        held.append(s)
    else:
        s.close()
print(json.dumps({"codes": codes}), flush=True)
sys.stdin.readline()
for s in held:
    s.close()
"""


def limit(name):
    return int(project_env()[name])


def flood(method, path, total, per_second, body=None):
    argv = in_network_command(
        FLOOD, method, path, total, per_second, *([json.dumps(body)] if body else [])
    )
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out)


def latency(api):
    started = time.monotonic()
    response = api.request("GET", "/api/tasks")
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def assert_rate_limited(result):
    status, retry_after, body = result
    assert status == 429
    assert json.loads(body)["error"]["code"] == "rate_limited"
    assert int(retry_after) >= 1


def test_cookieless_creations_from_one_address_are_mostly_refused_and_others_still_served(api):
    per_minute, burst = limit("CREATES_PER_MINUTE_PER_IP"), limit("CREATE_BURST_PER_IP")
    baseline = [latency(api) for _ in range(20)]
    process = flood(
        "POST", "/api/tasks", 300, 100, {"kind": "simulate", "params": {"steps": 1, "step_ms": 0}}
    )
    samples, deadline = [], time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        samples.append((time.time(), latency(api)))
        time.sleep(0.02)
    report = finished(process)

    statuses = Counter(result[0] for result in report["results"])
    assert sum(statuses.values()) == 300 and set(statuses) <= {202, 429}, statuses
    elapsed = report["end"] - report["start"]
    assert statuses[202] <= burst + per_minute / 60 * elapsed + 5, (statuses, elapsed)
    assert statuses[429] > 150, statuses
    assert_rate_limited(next(r for r in report["results"] if r[0] == 429))

    # The other client (the host's address) was served as usual meanwhile.
    during = [seconds for at, seconds in samples if report["start"] <= at <= report["end"]]
    assert len(during) >= 5, "the flood ended before the other client was measured"
    assert median(during) <= max(0.5, 5 * median(baseline)), (median(baseline), median(during))
    assert api.create(steps=1, step_ms=0)["state"] == "queued"


def test_event_reads_are_limited_per_address():
    per_second, burst = limit("EVENT_READS_PER_SECOND_PER_IP"), limit("EVENT_READS_BURST_PER_IP")
    total = 2 * burst + 100
    report = finished(flood("GET", "/api/tasks/AAAAAAAAAAAAAAAA/events?after=0", total, 400))
    statuses = Counter(result[0] for result in report["results"])
    assert set(statuses) <= {404, 429}, statuses
    elapsed = report["end"] - report["start"]
    assert statuses[404] <= burst + per_second * elapsed + 5, (statuses, elapsed)
    assert statuses[429] > 0
    assert_rate_limited(next(r for r in report["results"] if r[0] == 429))


def test_one_address_cannot_open_more_than_its_sockets_and_others_still_connect(api):
    allowed = limit("WS_CONNECTIONS_PER_IP")
    holder = subprocess.Popen(
        in_network_command(HOLD_SOCKETS, allowed + 10, interactive=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read()
        codes = Counter(json.loads(line)["codes"])
        assert codes == {101: allowed, 429: 10}, codes
        # Another address is not held back by that one.
        other = Watcher(api, reconnect=False).connect()
        try:
            task = api.create(steps=1, step_ms=0)
            assert other.follow(task["id"])["ok"]
            other.wait_terminal([task["id"]], timeout=30)
        finally:
            other.close()
    finally:
        holder.communicate("release\n", timeout=60)


def test_a_long_history_is_read_in_pages_over_http_and_socketio(api, watcher):
    task = api.create(steps=1, step_ms=0)
    wait_until(lambda: api.snapshot(task["id"])["state"] in TERMINAL, 30, what="the task to end")
    inject_events(task["id"], api.snapshot(task["id"])["seq"] + 1, 1200)

    first = api.request("GET", f"/api/tasks/{task['id']}/events?after=0").json()
    assert len(first["events"]) == 500 and first["has_more"] is True
    assert first["next_after"] == 500
    seqs, after = [], 0
    while True:
        page = api.request(
            "GET", f"/api/tasks/{task['id']}/events", params={"after": after, "limit": 450}
        ).json()
        seqs += [e["seq"] for e in page["events"]]
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert seqs == list(range(1, 1201))
    for bad in ("0", "501", "x"):
        response = api.request("GET", f"/api/tasks/{task['id']}/events?limit={bad}")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_params"

    ack = watcher.sio.call("subscribe", {"task_id": task["id"], "after": 0}, timeout=10)
    assert ack["ok"] and len(ack["missed"]) == 500 and ack["more"] is True
    ack = watcher.subscribe(task["id"], after=0)  # follows `more` page by page
    assert ack["ok"] and not ack.get("more")
    assert [e["seq"] for e in watcher.history(task["id"])] == list(range(1, 1201))


def recreate_nginx(**env):
    """`up` Nginx again with ``env`` on top of the test stack's settings."""
    subprocess.run(
        ["docker", "compose", "up", "-d", "--no-deps", "--wait", "nginx"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=120,
    )


def host_address_seen_by_nginx():
    """The address the host's requests reach Nginx from: its network's gateway."""
    (cid,) = compose("ps", "-q", "nginx").split()
    (network,) = docker(
        "inspect", "-f", "{{range $name, $net := .NetworkSettings.Networks}}{{$name}}{{end}}", cid
    ).split()
    return docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network).strip()


def test_clients_behind_a_trusted_proxy_get_limits_of_their_own():
    # The host plays an Ingress in front of two clients: with its address in
    # TRUSTED_PROXY_CIDRS, Nginx counts each X-Forwarded-For client on its own.
    recreate_nginx(
        TRUSTED_PROXY_CIDRS=f"{host_address_seen_by_nginx()}/32",
        CREATES_PER_MINUTE_PER_IP="1",
        CREATE_BURST_PER_IP="2",
    )
    try:

        def create_as(client):  # a malformed body: counted by Nginx, refused by the app
            return requests.post(
                f"{BASE_URL}/api/tasks",
                data="{",
                headers={"Content-Type": "application/json", "X-Forwarded-For": client},
                timeout=10,
            )

        first = [create_as("203.0.113.7").status_code for _ in range(5)]
        assert first.count(429) >= 2 and first[0] == 400, first
        other = create_as("203.0.113.8")
        assert other.status_code == 400, (other.status_code, other.text)  # not 429
        # A client's own X-Forwarded-For to the left of the proxy's entry counts for
        # nothing: the rightmost untrusted address is the client.
        spoofed = create_as("198.51.100.1, 203.0.113.7")
        assert spoofed.status_code == 429, spoofed.status_code
    finally:
        recreate_nginx()
