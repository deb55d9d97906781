"""The data export, for real: database → CSV → download through Nginx."""

import csv
import gzip
import io
import time
from datetime import datetime

import pytest
from conftest import Api, compose, wait_until

COLUMNS = ["id", "order_date", "customer", "product", "region", "quantity", "amount"]


def run_export(api, watcher, timeout=120, **params):
    task = api.create("export", **params)
    watcher.follow(task["id"])
    watcher.wait_terminal([task["id"]], timeout=timeout)
    snap = api.snapshot(task["id"])
    assert snap["state"] == "succeeded", snap
    return snap


def download(api, snap):
    response = api.request("GET", snap["result"]["download_url"], timeout=60)
    assert response.status_code == 200, response.text[:200]
    return response


def parse_csv(data):
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def direct_count(where):
    """Count rows with a query run right on the demo database, in a worker container."""
    script = (
        "import sqlite3; db = sqlite3.connect('/data/demo/orders.sqlite3'); "
        f'print(db.execute("SELECT count(*) FROM orders WHERE {where}").fetchone()[0])'
    )
    return int(compose("exec", "-T", "worker", "python", "-c", script).strip())


def export_files():
    return compose("exec", "-T", "worker", "ls", "-A", "/data/exports").split()


@pytest.fixture(scope="module")
def default_export(owner):
    """The whole demo table, with default params (downloaded at once: exports expire)."""
    api, watcher = owner
    snap = run_export(api, watcher)
    return snap, download(api, snap)


def test_default_export_downloads_as_an_attachment_matching_its_result(owner, default_export):
    snap, response = default_export
    result = snap["result"]
    assert set(result) >= {"download_url", "rows", "bytes", "filename"}
    assert result["download_url"] == f"/api/tasks/{snap['id']}/download"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{result["filename"]}"'
    assert response.headers["Content-Type"].startswith("text/csv")
    assert len(response.content) == result["bytes"]
    rows = parse_csv(response.content)
    assert rows[0] == COLUMNS
    assert len(rows) - 1 == result["rows"] == direct_count("1=1")
    assert rows[1][0] == "1" and rows[-1][0] == str(result["rows"])


def test_progress_rose_through_intermediate_values(owner, default_export):
    snap, _ = default_export
    _, watcher = owner
    values = [e["progress"] for e in watcher.history(snap["id"]) if e["state"] == "running"]
    assert any(0 < v < 100 for v in values), values
    assert values == sorted(values)


def test_date_range_exports_exactly_the_matching_rows_and_gzip_matches(owner):
    api, watcher = owner
    params = {
        "date_from": "2025-03-01",
        "date_to": "2025-03-31",
        "columns": ["id", "order_date", "amount"],
    }
    plain = run_export(api, watcher, **params)
    zipped = run_export(api, watcher, format="csv.gz", **params)
    plain_rows = parse_csv(download(api, plain).content)
    gz = download(api, zipped)
    assert gz.headers["Content-Disposition"].endswith('.csv.gz"')
    assert len(gz.content) == zipped["result"]["bytes"]
    assert parse_csv(gzip.decompress(gz.content)) == plain_rows
    expected = direct_count("order_date BETWEEN '2025-03-01' AND '2025-03-31'")
    assert len(plain_rows) - 1 == plain["result"]["rows"] == expected > 0
    assert plain_rows[0] == ["id", "order_date", "amount"]
    assert {r[1][:7] for r in plain_rows[1:]} == {"2025-03"}


def test_limit_caps_the_rows(owner):
    api, watcher = owner
    snap = run_export(api, watcher, limit=1234, columns=["id"])
    assert snap["result"]["rows"] == 1234
    assert len(parse_csv(download(api, snap).content)) == 1235


def test_cancel_mid_export_leaves_no_file(owner):
    api, watcher = owner
    task = api.create("export", format="csv.gz")
    watcher.follow(task["id"])
    wait_until(
        lambda: any(0 < e["progress"] < 50 for e in watcher.history(task["id"])),
        60,
        interval=0.02,
        what="the export to be under way",
    )
    assert api.request("POST", f"/api/tasks/{task['id']}/cancel", json={}).status_code == 202
    watcher.wait_terminal([task["id"]], timeout=60)
    assert watcher.history(task["id"])[-1]["state"] == "cancelled"
    assert not [f for f in export_files() if task["id"] in f]
    response = api.request("GET", f"/api/tasks/{task['id']}/download")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_deleting_a_finished_export_removes_its_file(owner):
    """The file went only when it expired, not with its task (issue 32)."""
    api, watcher = owner
    snap = run_export(api, watcher, limit=10)
    assert [f for f in export_files() if snap["id"] in f]
    assert api.request("DELETE", f"/api/tasks/{snap['id']}").status_code == 204
    wait_until(
        lambda: not [f for f in export_files() if snap["id"] in f],
        8,  # a worker removes it within a housekeeping round (2 s); before EXPORT_TTL (20 s)
        interval=0.5,
        what="the deleted task's export file to go",
    )


def test_another_session_and_crafted_paths_get_404(owner):
    api, watcher = owner
    snap = run_export(api, watcher, limit=10)
    stranger = Api()
    response = stranger.request("GET", snap["result"]["download_url"])
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    stranger.http.close()
    for path in [
        f"/_exports/{snap['id']}.csv",
        "/api/tasks/..%2F..%2Fetc%2Fpasswd/download",
        f"/api/tasks/{snap['id']}%2F..%2F..%2Fetc%2Fpasswd/download",
        "/_exports/../../etc/passwd",
    ]:
        response = api.request("GET", path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path


def test_expired_export_answers_410(owner):
    api, watcher = owner
    snap = run_export(api, watcher, limit=5)
    download(api, snap)
    expires = datetime.fromisoformat(snap["result"]["expires_at"].replace("Z", "+00:00"))
    assert expires.timestamp() > time.time(), "the test stack's EXPORT_TTL is too short"
    wait_until(
        lambda: api.request("GET", snap["result"]["download_url"]).status_code == 410,
        timeout=expires.timestamp() - time.time() + 15,
        interval=1,
        what="the export to expire",
    )
    response = api.request("GET", snap["result"]["download_url"])
    assert response.json()["error"]["code"] == "expired"


@pytest.mark.parametrize(
    "params, field",
    [
        ({"format": "xlsx"}, "params.format"),
        ({"columns": ["id", "password"]}, "params.columns"),
        ({"columns": []}, "params.columns"),
        ({"date_from": "2025-02-30"}, "params.date_from"),
        ({"date_from": "2025-03-02", "date_to": "2025-03-01"}, "params.date_to"),
        ({"limit": 0}, "params.limit"),
        ({"path": "/etc/passwd"}, "params.path"),
    ],
)
def test_bad_export_params_get_400_naming_the_field(api, params, field):
    response = api.request("POST", "/api/tasks", json={"kind": "export", "params": params})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_params" and error["message"].startswith(field), error


def test_openapi_describes_export_params(api):
    doc = api.request("GET", "/api/openapi.json").json()
    variants = doc["paths"]["/api/tasks"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["oneOf"]
    export = next(v for v in variants if v["properties"]["kind"]["enum"] == ["export"])
    assert set(export["properties"]["params"]["properties"]) == {
        "date_from",
        "date_to",
        "columns",
        "format",
        "limit",
    }
