"""Unit tests for the export job: params, CSV writing, end-to-end runs and cleanup."""

import csv
import gzip
import io
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from taskbeam import config, demo_data, export, jobs, progress

ROWS = 5000


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "orders.sqlite3"
    demo_data.build(str(path), count=ROWS)
    yield path
    engine = export._engines.pop(f"sqlite:///{path}", None)
    if engine is not None:
        engine.dispose()


def make_settings(db_path, tmp_path, **env):
    base = {
        "REDIS_URL": "redis://r:6379/0",
        "DATABASE_URL": f"sqlite:///{db_path}",
        "EXPORT_DIR": str(tmp_path / "exports"),
    }
    base.update(env)
    return config.load(base, need_secret=False)


@pytest.fixture
def settings(db_path, tmp_path):
    return make_settings(db_path, tmp_path)


def run(settings, params, task_id="t1", callback=None, run_id="1"):
    """Validate ``params`` and run the export; returns (result, progress calls)."""
    calls = []
    callback = callback or (lambda *args: calls.append(args))
    with progress.reporting_to(callback, task_id=task_id, run=run_id):
        result = export.run_export(
            export.export_params(params, settings), task_id, run_id, settings
        )
    return result, calls


def read_csv(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def sql_count(db_path, where="", args=()):
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(f"SELECT COUNT(*) FROM orders {where}", args).fetchone()[0]


# --- export_params -----------------------------------------------------------


def test_export_is_registered():
    assert jobs.JOBS["export"].celery_name == "taskbeam.export"


def test_params_defaults(settings):
    assert export.export_params({}, settings) == {
        "format": "csv",
        "columns": list(settings.export_columns),
    }


def test_params_keeps_and_normalises_good_values(settings):
    clean = export.export_params(
        {
            "format": "csv.gz",
            "columns": ["amount", "id"],
            "date_from": "2024-03-01",
            "date_to": "2024-06-30",
            "limit": 10,
        },
        settings,
    )
    assert clean == {
        "format": "csv.gz",
        "columns": ["amount", "id"],
        "date_from": "2024-03-01",
        "date_to": "2024-06-30",
        "limit": 10,
    }


def test_params_same_day_range_is_allowed(settings):
    clean = export.export_params({"date_from": "2024-03-01", "date_to": "2024-03-01"}, settings)
    assert clean["date_from"] == clean["date_to"] == "2024-03-01"


def test_params_none_values_are_absent(settings):
    clean = export.export_params(
        {"date_from": None, "date_to": None, "limit": None, "columns": None}, settings
    )
    assert clean == {"format": "csv", "columns": list(settings.export_columns)}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"format": "xlsx"}, "format"),
        ({"format": "CSV"}, "format"),
        ({"format": {"csv": 1}}, "format"),  # unhashable: not a 500 (found by the fuzz test)
        ({"format": ["csv"]}, "format"),
        ({"columns": [{"id": 1}]}, "columns"),
        ({"columns": [["id"]]}, "columns"),
        ({"columns": []}, "columns"),
        ({"columns": ["id", "password"]}, "columns"),
        ({"columns": ["id", "id"]}, "columns"),
        ({"columns": "id"}, "columns"),
        ({"columns": {"id": True}}, "columns"),
        ({"date_from": "20240301"}, "date_from"),  # dates are YYYY-MM-DD (format: date)
        ({"date_from": "2024-13-01"}, "date_from"),
        ({"date_from": 20240101}, "date_from"),
        ({"date_to": "yesterday"}, "date_to"),
        ({"date_from": "2024-06-01", "date_to": "2024-05-31"}, "date_to"),
        ({"limit": 0}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": export.MAX_LIMIT + 1}, "limit"),
        ({"table": "users"}, "table"),
    ],
)
def test_params_errors_name_the_field(settings, params, field):
    with pytest.raises(jobs.ParamError) as exc_info:
        export.export_params(params, settings)
    assert exc_info.value.field.split(".")[0] == field  # "columns.0": the list's first item


def test_params_unknown_column_is_named(settings):
    with pytest.raises(jobs.ParamError, match="password"):
        export.export_params({"columns": ["password"]}, settings)


# --- write_csv -----------------------------------------------------------------


def test_write_csv_quotes_and_reports():
    out, calls = io.StringIO(), []
    batches = [[(1, 'Acme, "the best"'), (2, "plain")], [(3, "")]]
    written = export.write_csv(batches, out, ["id", "name"], 3, lambda *a: calls.append(a))
    assert written == 3
    assert out.getvalue() == 'id,name\n1,"Acme, ""the best"""\n2,plain\n3,\n'
    assert list(csv.reader(io.StringIO(out.getvalue())))[1] == ["1", 'Acme, "the best"']
    assert [c[:2] for c in calls] == [(2, 3), (3, 3)]
    assert calls[-1][2] == "Exported 3 of 3 rows"


def test_write_csv_with_no_rows_writes_the_header():
    out, calls = io.StringIO(), []
    assert export.write_csv([], out, ["id"], 0, lambda *a: calls.append(a)) == 0
    assert out.getvalue() == "id\n"
    assert calls == []


# --- run_export -----------------------------------------------------------------


def test_export_whole_table(settings):
    result, calls = run(settings, {})
    final = export.export_paths(settings, "t1", "1", "csv")[0]
    assert result["rows"] == ROWS
    assert os.path.isfile(final)
    assert os.path.getsize(final) == result["bytes"]
    rows = read_csv(final)
    assert rows[0] == list(settings.export_columns)
    assert len(rows) == ROWS + 1
    assert rows[1][:2] == ["1", "2024-01-01"]
    assert result["download_url"] == "/api/tasks/t1/download"
    assert result["filename"].startswith("orders-") and result["filename"].endswith(".csv")
    assert result["expires_at"].endswith("Z")
    assert calls[0][:2] == (0, ROWS)
    assert calls[-1][:2] == (ROWS, ROWS)
    assert os.listdir(settings.export_dir) == ["t1.1.csv"]


def test_export_job_uses_the_task_id(settings, monkeypatch):
    monkeypatch.setattr(config, "current", lambda need_secret=False: settings)
    with progress.reporting_to(lambda *a: None, task_id="job-7", run="1"):
        result = export.export(jobs.JOBS["export"].load({"limit": 5}, settings))
    assert result["download_url"] == "/api/tasks/job-7/download"
    assert os.path.isfile(export.export_paths(settings, "job-7", "1", "csv")[0])


def test_export_date_range_is_inclusive(settings, db_path):
    result, calls = run(settings, {"date_from": "2024-03-01", "date_to": "2024-03-31"})
    expected = sql_count(db_path, "WHERE order_date BETWEEN ? AND ?", ("2024-03-01", "2024-03-31"))
    assert 0 < expected < ROWS
    assert result["rows"] == expected
    rows = read_csv(export.export_paths(settings, "t1", "1", "csv")[0])[1:]
    assert len(rows) == expected
    assert {r[1] for r in rows} >= {"2024-03-01", "2024-03-31"}
    assert all("2024-03-01" <= r[1] <= "2024-03-31" for r in rows)
    assert calls[-1][:2] == (expected, expected)


def test_export_open_ended_ranges(settings, db_path):
    result, _ = run(settings, {"date_from": "2025-12-01"}, task_id="from")
    assert result["rows"] == sql_count(db_path, "WHERE order_date >= ?", ("2025-12-01",))
    result, _ = run(settings, {"date_to": "2024-01-31"}, task_id="to")
    assert result["rows"] == sql_count(db_path, "WHERE order_date <= ?", ("2024-01-31",))


def test_export_empty_range(settings):
    result, calls = run(settings, {"date_from": "2030-01-01"})
    assert result["rows"] == 0
    assert read_csv(export.export_paths(settings, "t1", "1", "csv")[0]) == [
        list(settings.export_columns)
    ]
    assert calls[-1][:2] == (0, 0)


def test_export_column_subset_in_given_order(settings):
    result, _ = run(settings, {"columns": ["amount", "id", "region"], "limit": 3})
    rows = read_csv(export.export_paths(settings, "t1", "1", "csv")[0])
    assert rows[0] == ["amount", "id", "region"]
    assert [r[1] for r in rows[1:]] == ["1", "2", "3"]
    assert all(len(r) == 3 for r in rows)


def test_export_limit_caps_rows(settings):
    result, calls = run(settings, {"limit": 123})
    rows = read_csv(export.export_paths(settings, "t1", "1", "csv")[0])
    assert result["rows"] == 123
    assert len(rows) == 124
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 124))
    assert calls[-1][:2] == (123, 123)


def test_export_limit_above_total(settings):
    result, calls = run(settings, {"limit": ROWS * 10})
    assert result["rows"] == ROWS
    assert calls[-1][:2] == (ROWS, ROWS)


def test_export_gzip_has_same_rows_as_csv(settings):
    plain, _ = run(settings, {"date_to": "2024-06-30"}, task_id="plain")
    zipped, _ = run(settings, {"date_to": "2024-06-30", "format": "csv.gz"}, task_id="zipped")
    gz_path = export.export_paths(settings, "zipped", "1", "csv.gz")[0]
    assert gz_path.endswith("zipped.1.csv.gz")
    with open(gz_path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert read_csv(gz_path) == read_csv(export.export_paths(settings, "plain", "1", "csv")[0])
    assert zipped["rows"] == plain["rows"]
    assert zipped["bytes"] == os.path.getsize(gz_path)
    assert zipped["filename"].endswith(".csv.gz")


def test_export_missing_table_column_is_a_job_error(db_path, tmp_path):
    settings = make_settings(db_path, tmp_path, EXPORT_COLUMNS="id,secret")
    with pytest.raises(progress.JobError) as exc_info:
        run(settings, {"columns": ["id", "secret"]})
    assert exc_info.value.code == "invalid_params"
    assert "secret" in exc_info.value.message


def raise_after_first_batch(exc, folder, seen):
    """A progress callback that records the folder's files, then raises after batch one."""

    def callback(done, total, message):
        if done > 0:
            seen.append((done, total, sorted(os.listdir(folder))))
            raise exc

    return callback


@pytest.mark.parametrize("exc", [progress.Cancelled(), RuntimeError("boom")])
def test_failed_export_leaves_no_file(settings, monkeypatch, exc):
    monkeypatch.setattr(export, "BATCH_ROWS", 1000)
    tmp = export.export_paths(settings, "t1", "1", "csv")[1]
    seen = []
    with pytest.raises(type(exc)):
        run(settings, {}, callback=raise_after_first_batch(exc, settings.export_dir, seen))
    assert seen == [(1000, ROWS, [os.path.basename(tmp)])]  # stopped mid-file
    assert os.listdir(settings.export_dir) == []


def test_cancel_keeps_other_exports(settings, monkeypatch):
    run(settings, {"limit": 10}, task_id="done")
    monkeypatch.setattr(export, "BATCH_ROWS", 1000)
    callback = raise_after_first_batch(progress.Cancelled(), settings.export_dir, [])
    with pytest.raises(progress.Cancelled):
        run(settings, {}, callback=callback)
    assert os.listdir(settings.export_dir) == ["done.1.csv"]


def test_two_runs_of_one_task_never_share_a_file(settings, monkeypatch):
    """A run frozen mid-file and handed over (run 1) thaws while its successor
    (run 2) has finished: each writes and renames its own file, so the one the
    successful run describes is whole."""
    monkeypatch.setattr(export, "BATCH_ROWS", 1000)
    second = {}

    def first_run_callback(done, total, message):
        if done == 1000 and not second:  # frozen here; run 2 does the whole export
            second["result"] = run(settings, {}, run_id="2")[0]

    first, _ = run(settings, {}, callback=first_run_callback, run_id="1")
    winner = export.export_paths(settings, "t1", "2", "csv")[0]
    rows = read_csv(winner)
    assert len(rows) == 1 + ROWS == 1 + second["result"]["rows"]
    assert os.path.getsize(winner) == second["result"]["bytes"]
    assert first["bytes"] == second["result"]["bytes"]  # the loser's file is its own
    assert sorted(os.listdir(settings.export_dir)) == ["t1.1.csv", "t1.2.csv"]


# --- remove_expired_exports --------------------------------------------------------

NOW = 2_000_000_000


def touch(folder, name, age):
    path = folder / name
    path.write_text("x")
    os.utime(path, (NOW - age, NOW - age))
    return path


def test_remove_expired_exports(settings):
    folder = Path(settings.export_dir)
    folder.mkdir()
    ttl, tmp_age = settings.export_ttl_s, settings.task_time_limit_s + 60
    touch(folder, "old.csv", ttl + 1)
    touch(folder, "old.csv.gz", ttl + 1000)
    touch(folder, "fresh.csv", ttl - 1)
    touch(folder, ".x.csv.tmp", tmp_age + 1)
    touch(folder, ".y.csv.tmp", tmp_age - 1)
    (folder / "subdir").mkdir()
    os.utime(folder / "subdir", (0, 0))
    assert export.remove_expired_exports(settings, now=NOW) == 3
    assert sorted(os.listdir(folder)) == [".y.csv.tmp", "fresh.csv", "subdir"]
    assert export.remove_expired_exports(settings, now=NOW) == 0


def test_remove_expired_exports_uses_configured_ttl(db_path, tmp_path):
    settings = make_settings(db_path, tmp_path, EXPORT_TTL="60", TASK_TIME_LIMIT_S="10")
    folder = Path(settings.export_dir)
    folder.mkdir()
    touch(folder, "a.csv", 61)
    touch(folder, "b.csv", 59)
    touch(folder, ".c.csv.tmp", 71)
    touch(folder, ".d.csv.tmp", 69)
    assert export.remove_expired_exports(settings, now=NOW) == 2
    assert sorted(os.listdir(folder)) == [".d.csv.tmp", "b.csv"]


def test_remove_expired_exports_without_folder(settings):
    assert not os.path.exists(settings.export_dir)
    assert export.remove_expired_exports(settings, now=NOW) == 0


# --- database failures the user reads ------------------------------------------------


class FakeOperationalError(Exception):
    def __init__(self, sqlstate=None):
        super().__init__("driver message")
        self.sqlstate = sqlstate


class FakeWrapped(Exception):
    """SQLAlchemy's DBAPIError: the driver's exception in ``orig``."""

    def __init__(self, orig, connection_invalidated=False):
        super().__init__(str(orig))
        self.orig = orig
        self.connection_invalidated = connection_invalidated


def fake_engine(name):
    dialect = type("Dialect", (), {"name": name, "dbapi": type("DBAPI", (), {})})()
    dialect.dbapi.OperationalError = FakeOperationalError
    return type("Engine", (), {"dialect": dialect})()


@pytest.mark.parametrize(
    "exc, code",
    [
        (FakeOperationalError("57014"), "query_timeout"),  # statement timeout
        (FakeWrapped(FakeOperationalError("57014")), "query_timeout"),
        (FakeOperationalError("57P01"), "database_unavailable"),  # admin shutdown (restart)
        (FakeOperationalError(None), "database_unavailable"),  # connection refused or broken
        (FakeWrapped(FakeOperationalError("08006")), "database_unavailable"),
        (FakeWrapped(ValueError("x"), connection_invalidated=True), "database_unavailable"),
        (FakeOperationalError("42P01"), None),  # undefined table: a bug or bad settings
        (ValueError("not a database error"), None),
        (progress.Cancelled(), None),
    ],
)
def test_database_errors_map_to_codes_the_user_reads(settings, exc, code):
    error = export._database_error(exc, fake_engine("postgresql"), settings)
    assert (error.code if error else None) == code
    if code == "query_timeout":
        assert "EXPORT_STATEMENT_TIMEOUT_S" in error.message


def test_other_databases_map_only_lost_connections(settings):
    engine = fake_engine("sqlite")
    assert export._database_error(FakeOperationalError(None), engine, settings) is None
    lost = FakeWrapped(FakeOperationalError(None), connection_invalidated=True)
    assert export._database_error(lost, engine, settings).code == "database_unavailable"


ODD_VALUES = [{}, {"a": [1]}, [], [[1]], [{}], 1.5, -(2**70), None, True, "", "x" * 300]


@pytest.mark.parametrize("kind", sorted(jobs.JOBS))
def test_any_json_value_in_any_field_is_a_param_error_or_clean(settings, kind):
    """What the API turns into a 400 (ParamError) or accepts; never another exception (a 500)."""
    for field in jobs.JOBS[kind].params.model_fields:
        for value in ODD_VALUES:
            try:
                jobs.JOBS[kind].validate({field: value}, settings)
            except jobs.ParamError:
                pass
