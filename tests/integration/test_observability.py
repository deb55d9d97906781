"""One request id finds the whole story: Nginx's JSON access line, the web's line, the
worker's lines and the task's events (tests/run.sh runs the stack with LOG_FORMAT=json)."""

import time

from conftest import TERMINAL, json_lines, stored_history, wait_until


def test_one_request_id_leads_from_nginx_to_the_tasks_events(api):
    since = str(int(time.time()) - 1)
    # A client's own X-Request-ID is not believed: Nginx sets its own.
    reply = api.request(
        "POST",
        "/api/tasks",
        json={"kind": "simulate", "params": {"steps": 3, "step_ms": 10}},
        headers={"X-Request-ID": "chosen-by-the-client"},
    )
    assert reply.status_code == 202, reply.text
    task_id, request_id = reply.json()["id"], reply.headers["X-Request-ID"]
    assert request_id != "chosen-by-the-client" and len(request_id) == 32
    wait_until(lambda: api.snapshot(task_id)["state"] in TERMINAL, 60, what="the task to end")

    def nginx_line():
        return [x for x in json_lines("nginx", since) if x.get("request_id") == request_id]

    (access,) = wait_until(nginx_line, 20, what="Nginx's access line")
    assert (access["method"], access["uri"], access["status"]) == ("POST", "/api/tasks", 202)

    def web_line():
        return [x for x in json_lines("web", since) if x.get("request_id") == request_id]

    (created,) = wait_until(web_line, 20, what="the web's line")
    assert created["task_id"] == task_id and created["owner"]

    def worker_lines():
        lines = [x for x in json_lines("worker", since) if x.get("request_id") == request_id]
        return lines if any("succeeded" in x["message"] for x in lines) else None

    lines = wait_until(worker_lines, 30, what="the worker's lines")
    assert {x["task_id"] for x in lines} == {task_id}
    assert {x["owner"] for x in lines} == {created["owner"]}
    assert any(x.get("run") == "1" for x in lines)

    events = stored_history(api, task_id)
    assert [e["state"] for e in events][-1] == "succeeded"
    # The health checks (Nginx's own, the web's /readyz every few seconds) leave no lines.
    assert not any(
        x.get("uri") in ("/healthz", "/readyz", "/nginx-health") for x in json_lines("nginx", since)
    )
    assert not any("/readyz" in x["message"] for x in json_lines("web", since))
