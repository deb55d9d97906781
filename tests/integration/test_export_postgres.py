"""The export from a real PostgreSQL (postgres/compose.yml): both paths, snapshot,
cancel, restart, statement timeout, index use, read-only role.

Runs in the PostgreSQL pass of tests/run.sh (TEST_DATABASE=postgres), where the
workers read the demo table from the stack's PostgreSQL. Some tests drive the
worker's export code directly inside a worker container (the same code a task
runs, against the same database); the others go through the API like a user.
"""

import csv
import gzip
import io
import json
import os
import subprocess

import pytest
from conftest import compose, wait_until

pytestmark = pytest.mark.skipif(
    os.environ.get("TEST_DATABASE") != "postgres",
    reason="needs the stack on PostgreSQL (the PostgreSQL pass of tests/run.sh)",
)

# Prepended to every script run in a worker: the worker's settings, a progress
# sink, and ``export(params, run, copy=True)`` returning (result, progress calls, file bytes).
PRELUDE = r"""
import dataclasses, gzip, json, os, sys
from taskbeam import config, export, progress
settings = config.current()

def export_file(params, run, copy=True, on_progress=None, settings=settings):
    calls = []
    def report(done, total, message):
        calls.append((done, total))
        if on_progress:
            on_progress(done, total)
    clean = export.export_params(params, settings)
    with progress.reporting_to(report, task_id="pgtest", run=run):
        result = export.run_export(clean, "pgtest", run, settings, copy=copy)
    path = export.export_paths(settings, "pgtest", run, clean["format"])[0]
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    if clean["format"] == "csv.gz":
        data = gzip.decompress(data)
    return result, calls, data

def leftovers(run):
    return [n for n in os.listdir(settings.export_dir) if f"pgtest.{run}." in n]
"""


def in_worker(script, env=None, timeout=120):
    """Run PRELUDE + ``script`` in a worker container; returns its last output line as JSON."""
    args = ["docker", "compose", "exec", "-T"]
    for name, value in (env or {}).items():
        args += ["-e", f"{name}={value}"]
    done = subprocess.run(
        [*args, "worker", "python", "-"],
        input=PRELUDE + script,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def psql(sql):
    """Run ``sql`` as the owner, in the PostgreSQL container; returns its unaligned rows."""
    out = compose("exec", "-T", "postgres", "psql", "-U", "taskbeam", "-AtX", "-c", sql)
    return [line.split("|") for line in out.splitlines() if line]


def owner_url():
    password = compose("exec", "-T", "postgres", "printenv", "POSTGRES_PASSWORD").strip()
    return f"postgresql://taskbeam:{password}@postgres:5432/taskbeam"


def export_sessions():
    """The export role's sessions that are not plain idle (a COPY, a transaction left open)."""
    return psql(
        "SELECT state, left(query, 40) FROM pg_stat_activity "
        "WHERE usename = 'taskbeam_export' AND state <> 'idle'"
    )


def wait_postgres_healthy():
    wait_until(
        lambda: "healthy" in compose("ps", "--format", "{{.Status}}", "postgres"),
        60,
        interval=0.5,
        what="PostgreSQL to be healthy again",
    )


def start_and_wait_under_way(api, watcher, **params):
    task = api.create("export", **params)
    watcher.follow(task["id"])
    wait_until(
        # Early on, so the fault lands well before the last row (1M rows take ~4 s).
        lambda: any(0 < e["progress"] < 25 for e in watcher.history(task["id"])),
        60,
        interval=0.02,
        what="the export to be under way",
    )
    return task


def export_files():
    return compose("exec", "-T", "worker", "ls", "-A", "/data/exports").split()


# --- the stack ---------------------------------------------------------------------


def test_postgres_is_not_published_and_runs_as_non_root():
    assert compose("ps", "--format", "{{.Publishers}}", "postgres").strip() in ("", "[]")
    assert compose("exec", "-T", "postgres", "id", "-u").strip() != "0"
    assert psql("SELECT count(*) FROM orders") == [["1000000"]]


def test_the_export_role_can_only_read():
    out = in_worker(
        """
import sqlalchemy as sa
errors = []
for statement in ("INSERT INTO orders (id) VALUES (0)", "CREATE TABLE stolen (x int)"):
    try:
        with export._engine(settings.database_url).begin() as conn:
            conn.exec_driver_sql(statement)
    except sa.exc.DBAPIError as exc:
        errors.append(exc.orig.sqlstate)
print(json.dumps(errors))
"""
    )
    # 25006: read-only transaction (the role's default); 42501: permission denied.
    assert len(out) == 2 and set(out) <= {"25006", "42501"}, out


# --- the two paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 200_000},
        {"date_from": "2025-03-01", "date_to": "2025-03-31", "format": "csv.gz"},
        {"columns": ["amount", "customer", "id"], "date_to": "2024-01-31"},
    ],
    ids=["limit", "date-range-gz", "columns"],
)
def test_copy_and_generic_paths_write_the_same_bytes(params):
    out = in_worker(
        f"""
import hashlib
copies = []
real_copy = export._copy_csv
export._copy_csv = lambda *args: copies.append(1) or real_copy(*args)
fast, fast_calls, fast_data = export_file({params!r}, "fast", copy=True)
slow, _, slow_data = export_file({params!r}, "slow", copy=False)
print(json.dumps({{
    "copy_used": len(copies), "rows": [fast["rows"], slow["rows"]],
    "same": fast_data == slow_data, "lines": fast_data.count(b"\\n"),
    "head": fast_data[:200].decode(), "last_progress": fast_calls[-1],
}}))
"""
    )
    assert out["copy_used"] == 1, "the COPY path did not run"
    assert out["same"], out["head"]
    rows = out["rows"][0]
    assert out["rows"] == [rows, rows] and rows > 0 and out["lines"] == rows + 1
    assert out["last_progress"] == [rows, rows]
    header = next(csv.reader(io.StringIO(out["head"])))
    assert header == params.get("columns", header) and header[0] in ("id", "amount")


def test_export_through_the_api_reads_postgresql(owner):
    api, watcher = owner
    params = {"date_from": "2025-06-01", "date_to": "2025-06-30", "format": "csv.gz"}
    task = api.create("export", **params)
    watcher.follow(task["id"])
    watcher.wait_terminal([task["id"]], timeout=120)
    snap = api.snapshot(task["id"])
    assert snap["state"] == "succeeded", snap
    response = api.request("GET", snap["result"]["download_url"], timeout=60)
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(gzip.decompress(response.content).decode())))
    expected = psql(
        "SELECT count(*), min(id), max(id) FROM orders "
        "WHERE order_date BETWEEN '2025-06-01' AND '2025-06-30'"
    )[0]
    assert len(rows) - 1 == snap["result"]["rows"] == int(expected[0]) > 0
    assert rows[1][0] == expected[1] and rows[-1][0] == expected[2]
    assert {r[1][:7] for r in rows[1:]} == {"2025-06"}


# --- consistency, cancel, faults ---------------------------------------------------


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "generic"])
def test_count_and_rows_come_from_one_snapshot(copy):
    """Rows committed between the count and the rows are in neither."""
    out = in_worker(
        f"""
import psycopg
owner = psycopg.connect(os.environ["OWNER_URL"], autocommit=True)
owner.execute("DELETE FROM orders WHERE id > 1000000")
def insert_once(done, total):
    if done == 0:
        owner.execute(
            "INSERT INTO orders SELECT 1000000 + n, '2025-12-15', 'Late', 'Widget S', "
            "'North', 1, 4.50 FROM generate_series(1, 500) AS n"
        )
try:
    params = {{"date_from": "2025-12-01", "date_to": "2025-12-31"}}
    result, calls, data = export_file(params, "snap", copy={copy}, on_progress=insert_once)
finally:
    owner.execute("DELETE FROM orders WHERE id > 1000000")
print(json.dumps({{"total": calls[0][1], "rows": result["rows"], "lines": data.count(b"\\n"),
                  "late": data.count(b"Late")}}))
""",
        env={"OWNER_URL": owner_url()},
    )
    assert out["late"] == 0, out
    assert out["total"] == out["rows"] == out["lines"] - 1, out


def test_cancel_ends_the_copy_and_its_transaction_at_once(owner):
    api, watcher = owner
    task = start_and_wait_under_way(api, watcher, format="csv.gz")
    assert export_sessions(), "the export's session was not seen while it ran"
    assert api.request("POST", f"/api/tasks/{task['id']}/cancel", json={}).status_code == 202
    watcher.wait_terminal([task["id"]], timeout=60)
    assert watcher.history(task["id"])[-1]["state"] == "cancelled"
    # "At once": the server side is gone within a second or two of the terminal event,
    # not after idle_in_transaction_session_timeout (60 s) or a finished COPY.
    wait_until(lambda: not export_sessions(), 3, interval=0.1, what="no export session left")
    assert not [f for f in export_files() if task["id"] in f]


def test_database_restart_mid_export_fails_with_database_unavailable(owner):
    api, watcher = owner
    task = start_and_wait_under_way(api, watcher, format="csv.gz")
    compose("restart", "postgres")
    watcher.wait_terminal([task["id"]], timeout=60)
    last = watcher.history(task["id"])[-1]
    assert last["state"] == "failed" and last["error"]["code"] == "database_unavailable", last
    assert not [f for f in export_files() if task["id"] in f]
    # The next export gets a fresh connection and succeeds.
    wait_postgres_healthy()
    again = api.create("export", limit=1000)
    watcher.follow(again["id"])
    watcher.wait_terminal([again["id"]], timeout=60)
    assert api.snapshot(again["id"])["state"] == "succeeded"


def test_statement_timeout_stops_a_long_query():
    out = in_worker(
        """
slow = dataclasses.replace(settings, export_statement_timeout_s=1)
try:
    export_file({"format": "csv.gz"}, "timeout", settings=slow)
    print(json.dumps({"code": None}))
except progress.JobError as exc:
    print(json.dumps({"code": exc.code, "message": exc.message, "left": leftovers("timeout")}))
"""
    )
    assert out["code"] == "query_timeout" and out["left"] == [], out
    assert "EXPORT_STATEMENT_TIMEOUT_S" in out["message"]


def test_the_date_filter_uses_the_date_index():
    out = in_worker(
        """
params = export.export_params({"date_from": "2025-03-01", "date_to": "2025-03-31"}, settings)
engine, count, rows = export._query(settings, params)
plans = []
with engine.connect() as conn:
    for statement in (count, rows):
        compiled = statement.compile(dialect=conn.dialect)
        result = conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
        plans.append("\\n".join(r[0] for r in result))
print(json.dumps(plans))
"""
    )
    for plan in out:
        assert "orders_order_date" in plan, plan
