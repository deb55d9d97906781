"""The ``export`` job: a database table → CSV (or gzipped CSV) → a download link.

Reads through SQLAlchemy Core (the demo's SQLite by default, any database via
``DATABASE_URL``), counts first for the progress total, then streams batches
into a temporary file on the exports volume that is renamed into place only on
success. A failed or cancelled export leaves no file behind. Nginx serves the
finished file (X-Accel-Redirect); the bytes never pass through Python.

On PostgreSQL (psycopg) the rows come from ``COPY (<the same SELECT>) TO STDOUT``
instead: the server writes the CSV, Python only counts and stores it. The count
and the rows are read in one read-only REPEATABLE READ transaction there, so the
total matches the rows written while the table changes.
"""

import contextlib
import csv
import gzip
import io
import os
import time
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from . import config, progress, protocol, registry
from .registry import ParamError, job

FORMATS = {"csv": "text/csv; charset=utf-8", "csv.gz": "application/gzip"}
BATCH_ROWS = 10_000
MAX_LIMIT = 100_000_000
_engines = {}


def _settings(info):
    return (info.context or {}).get("settings") or config.current()


def _columns_schema(schema):
    """The table's columns as a pick list (read when the schema is made)."""
    columns = list((registry.schema_settings.get() or config.current()).export_columns)
    schema.clear()
    schema.update(
        type="array",
        items={"type": "string", "enum": columns},
        minItems=1,
        uniqueItems=True,
        default=columns,
        description="Columns to export, in this order (default: all).",
    )


class ExportParams(BaseModel):
    """Defaults export every row and column of the table as CSV."""

    model_config = ConfigDict(extra="forbid", title="Export")

    date_from: date | None = Field(None, description="First day (inclusive).")
    date_to: date | None = Field(None, description="Last day (inclusive).")
    columns: list[str] | None = Field(None, min_length=1, json_schema_extra=_columns_schema)
    format: Literal["csv", "csv.gz"] = Field("csv", description="File format.")
    limit: int | None = Field(None, ge=1, le=MAX_LIMIT, description="At most this many rows.")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, columns, info: ValidationInfo):
        if columns is None:
            return None
        allowed = _settings(info).export_columns
        for name in columns:
            if name not in allowed:
                raise ParamError(
                    "columns",
                    f"unknown column {name[:40]!r} (allowed: {', '.join(allowed)})",
                )
        if len(set(columns)) != len(columns):
            raise ParamError("columns", "lists a column twice")
        return columns

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo):
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ParamError("date_to", "must not be before date_from")
        if self.columns is None:
            self.columns = list(_settings(info).export_columns)
        return self


def export_params(params, settings=None):
    """Validate export params (:class:`ExportParams`) into the clean dict the export runs on."""
    return registry.get("export").validate(params, settings or config.current())


def write_csv(batches, out, header, total, report):
    """Write ``header`` then every row of ``batches`` (iterables of row tuples) to ``out``.

    Calls ``report(rows_written, total, message)`` after each batch; returns the
    number of data rows written. The ``csv`` module does the quoting.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    written = 0
    for batch in batches:
        writer.writerows(batch)
        written += len(batch)
        report(written, total, f"Exported {written:,} of {total:,} rows")
    return written


def export_file_name(task_id, run, fmt):
    """The finished file of one run of a task; built from ids only, never user input.

    Each run has its own file: a run that was frozen and handed over can finish
    writing and renaming, but only the file of the run whose terminal event the
    store accepted is ever served (see ``download`` in the web API).
    """
    return f"{task_id}.{run}.{fmt}"


def export_paths(settings, task_id, run, fmt):
    """The run's final path and the temporary path it writes first."""
    name = export_file_name(task_id, run, fmt)
    return os.path.join(settings.export_dir, name), os.path.join(
        settings.export_dir, f".{name}.tmp"
    )


# libpq settings (psycopg, psycopg2) unless DATABASE_URL sets them. A server
# that goes away mid-COPY (restarted, or its host gone) may never send another byte
# while the client only reads: TCP keepalives find that out in seconds, not hours.
PG_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def _engine(url):
    import sqlalchemy  # the web process never needs it

    if url not in _engines:
        parsed = sqlalchemy.make_url(url)
        connect_args = {}
        if parsed.get_driver_name() in ("psycopg", "psycopg2"):
            connect_args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in parsed.query}
        _engines[url] = sqlalchemy.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    return _engines[url]


def _query(settings, params):
    """The count and the select statements for ``params``."""
    import sqlalchemy as sa

    engine = _engine(settings.database_url)
    table = sa.Table(settings.export_table, sa.MetaData(), autoload_with=engine)
    missing = [c for c in params["columns"] + [settings.export_date_column] if c not in table.c]
    if missing:
        raise progress.JobError("invalid_params", f"columns: {missing[0]!r} is not in the table")
    date_col = table.c[settings.export_date_column]
    conditions = []
    for name, compare in (("date_from", date_col.__ge__), ("date_to", date_col.__le__)):
        if name in params:
            value = date.fromisoformat(params[name])
            # Text dates (SQLite) compare as ISO strings; real DATE columns take dates.
            conditions.append(compare(value.isoformat() if _is_text(date_col) else value))
    count = sa.select(sa.func.count()).select_from(table).where(*conditions)
    rows = sa.select(*[table.c[c] for c in params["columns"]]).where(*conditions)
    rows = rows.order_by(*(table.primary_key.columns or [date_col]))
    if "limit" in params:
        rows = rows.limit(params["limit"])
    return engine, count, rows


@contextlib.contextmanager
def _snapshot(engine, settings):
    """A connection inside one transaction that the count and the rows share.

    On PostgreSQL: REPEATABLE READ, read only, and the statement timeout. Leaving
    the block (also by ``progress.Cancelled``) rolls back and ends the server-side
    cursor with it (the COPY path closes its connection instead, see ``_copy_csv``):
    no session is left ``idle in transaction``.
    """
    with engine.connect() as conn:
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            if postgres and settings.export_statement_timeout_s:
                conn.exec_driver_sql(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (f"{settings.export_statement_timeout_s}s",),
                )
            yield conn


def _copy_capable(conn):
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def _copy_csv(conn, rows_stmt, out, total):
    """Stream ``COPY (rows_stmt) TO STDOUT`` as CSV with a header into ``out``.

    The SELECT is SQLAlchemy's, compiled for this connection; its parameters are
    bound by psycopg on the client (COPY takes none on the server). The server
    sends one message per row, after one for the header: counting messages counts
    rows, also where a value holds a newline. Returns the data rows written.

    Anything that ends the copy early (a cancel, a lost lease, a broken connection)
    closes the connection first: the server then ends the COPY and its transaction
    at its next write. psycopg's own clean-up would send a cancel request and wait
    for the rest of the data, which hangs while the server restarts.
    """
    compiled = rows_stmt.compile(dialect=conn.dialect)
    statement = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, HEADER)"
    cursor = conn.connection.driver_connection.cursor()
    written = -1
    write = out.write
    with cursor.copy(statement, compiled.params) as copy:
        try:
            for chunk in copy:
                write(chunk)
                written += 1
                if written % BATCH_ROWS == 0 and written:
                    progress.update(written, total, f"Exported {written:,} of {total:,} rows")
        except BaseException:
            conn.invalidate()  # closes the DBAPI connection; the pool opens a new one
            raise
    written = max(written, 0)
    progress.update(written, total, f"Exported {written:,} of {total:,} rows")
    return written


def _database_error(exc, engine, settings):
    """The error a user reads for a database failure; None when it is something else."""
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's exception
    state = getattr(orig, "sqlstate", None) or ""
    if state == "57014":  # query_canceled: the statement timeout (or an administrator)
        return progress.JobError(
            "query_timeout",
            "The database stopped the export's query (EXPORT_STATEMENT_TIMEOUT_S is "
            f"{settings.export_statement_timeout_s} s).",
        )
    dbapi = engine.dialect.dbapi
    gone = getattr(exc, "connection_invalidated", False) or (
        engine.dialect.name == "postgresql"
        and isinstance(orig, dbapi.OperationalError)
        # No SQLSTATE: the connection failed or broke; 08: connection exceptions;
        # 57P: the server shut down, crashed or is starting.
        and (not state or state.startswith(("08", "57P")))
    )
    if gone:
        return progress.JobError(
            "database_unavailable",
            "The database could not be reached or went away during the export; "
            "no file was kept. Run the export again.",
        )
    return None


def _open_output(path, fmt, binary):
    """The temporary file, gzipped for ``csv.gz``; bytes for COPY, text otherwise."""
    if fmt == "csv.gz":
        # Buffered: COPY hands over one row at a time, too small a write for zlib.
        # Level 6 (zlib's and gzip's default): 9 costs about twice the CPU for files
        # a few per cent smaller.
        raw = io.BufferedWriter(gzip.open(path, "wb", compresslevel=6), buffer_size=1 << 20)
    else:
        raw = open(path, "wb", buffering=1 << 20)  # closed by the caller
    if binary:
        return raw
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _is_text(column):
    try:
        return column.type.python_type is str
    except NotImplementedError:
        return False


def run_export(params, task_id, run, settings, copy=True):
    """Export to the exports volume; returns the task's ``result``.

    ``copy=False`` takes the generic SQLAlchemy path on PostgreSQL too (the tests
    and the benchmark compare the two).
    """
    fmt = params["format"]
    final, tmp = export_paths(settings, task_id, run, fmt)
    os.makedirs(settings.export_dir, exist_ok=True)
    engine = _engine(settings.database_url)
    try:
        engine, count_stmt, rows_stmt = _query(settings, params)
        with _snapshot(engine, settings) as conn:
            total = conn.execute(count_stmt).scalar_one()
            total = min(total, params.get("limit", total))
            progress.update(0, total, f"Exporting {total:,} rows")
            fast = copy and _copy_capable(conn)
            with _open_output(tmp, fmt, binary=fast) as out:
                if fast:
                    written = _copy_csv(conn, rows_stmt, out, total)
                else:
                    result = conn.execution_options(yield_per=BATCH_ROWS).execute(rows_stmt)
                    written = write_csv(
                        result.partitions(), out, params["columns"], total, progress.update
                    )
        os.replace(tmp, final)  # complete files only: the rename is atomic
    except Exception as exc:
        error = _database_error(exc, engine, settings)
        if error is None:
            raise
        raise error from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    finished = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(finished))
    return {
        "download_url": f"/api/tasks/{task_id}/download",
        "rows": written,
        "bytes": os.path.getsize(final),
        "filename": f"{settings.export_table}-{stamp}.{fmt}",
        "expires_at": protocol.iso_utc(finished + settings.export_ttl_s),
    }


def _summary(result):
    return f"Exported {result['rows']:,} rows ({result['bytes']:,} bytes)"


@job(
    "export",
    params=ExportParams,
    title="Export",
    description="Export the table as a CSV file to download.",
    units="rows",
    summary=_summary,
)
def export(params: ExportParams):
    """Export rows of the configured table as CSV; see :class:`ExportParams`."""
    clean = params.model_dump(mode="json", exclude_none=True)
    return run_export(clean, progress.current_task_id(), progress.current_run(), config.current())


def remove_expired_exports(settings, now=None):
    """Delete exports older than EXPORT_TTL and temp files of long-dead runs."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(settings.export_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        is_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")
        max_age = settings.task_time_limit_s + 60 if is_tmp else settings.export_ttl_s
        try:
            if entry.is_file() and now - entry.stat().st_mtime > max_age:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass  # another worker removed it first
    return removed
