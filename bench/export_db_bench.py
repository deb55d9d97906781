"""Export throughput (rows/s) and worker peak RSS: SQLite, PostgreSQL through the
generic SQLAlchemy path, PostgreSQL through COPY, and psql's \\copy as the limit.

`make bench-export`, with the stack on PostgreSQL (COMPOSE_FILE in .env, see
docs/export.md). Each export runs the worker's real code in a fresh process inside a worker
container (its peak RSS is its own); psql runs in a container of its own on the
project network, as the worker reaches the database, writing to /dev/null (CSV)
or through gzip to /dev/null (CSV.gz). Repeats each figure, prints a table and
writes bench/results/export-ROWS.json.
"""

import argparse
import json
import statistics
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE_RUN = r"""
import dataclasses, json, os, resource, sys, time
from taskbeam import config, demo_data, export, progress
db, copy, fmt, table = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[5]
rows = int(sys.argv[4])
settings = dataclasses.replace(config.current(), export_table=table)
if db == "sqlite":
    # Absent when the demo runs on PostgreSQL, or of another size: built once.
    path = "/data/demo/orders.sqlite3" if rows == 1_000_000 else f"/data/demo/orders-{rows}.sqlite3"
    demo_data.ensure(path, rows)
    url = f"sqlite:///{path}"
    settings = dataclasses.replace(settings, database_url=url, export_table="orders")
params = export.export_params({"format": fmt, "limit": rows}, settings)
with progress.reporting_to(lambda *a: None, task_id="bench", run="1"):
    # A worker keeps its engine: connecting, loading the driver and reflecting the
    # table (0.1-0.4 s) happen once per process, not per export, so not in the figure.
    warm = export.export_params({"format": fmt, "limit": 1}, settings)
    export.run_export(warm, "bench", "1", settings, copy=copy)
    started = time.perf_counter()
    result = export.run_export(params, "bench", "1", settings, copy=copy)
elapsed = time.perf_counter() - started
os.unlink(export.export_paths(settings, "bench", "1", fmt)[0])
print(json.dumps({"rows": result["rows"], "bytes": result["bytes"], "seconds": elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# The statement the COPY path sends, as the export builds it (same SELECT, same LIMIT).
COPY_SQL = r"""
import dataclasses, sys
import psycopg
from taskbeam import config, export
settings = config.current()
settings = dataclasses.replace(settings, export_table=sys.argv[2])
params = export.export_params({"limit": int(sys.argv[1])}, settings)
engine, _, rows = export._query(settings, params)
compiled = rows.compile(dialect=engine.dialect)
with engine.connect() as conn:
    cursor = psycopg.ClientCursor(conn.connection.driver_connection)
    print(cursor.mogrify(str(compiled), compiled.params))
"""

PSQL = r"""
export PGPASSWORD="$POSTGRES_PASSWORD"
start=$(date +%s%N)
psql -X -q -h "$PGHOST" -U taskbeam -d taskbeam \
  -c "\copy ($COPY_SELECT) to stdout with (format csv, header)" | $SINK > /dev/null
end=$(date +%s%N)
echo $(( (end - start) / 1000 ))
"""

# More rows than the demo's million: the demo table n times over, ids shifted, in
# id order like the demo (an index scan on the key reads the heap in order).
BIG_TABLE = """
DROP TABLE IF EXISTS orders_big;
CREATE TABLE orders_big AS
  SELECT o.id + k * 1000000 AS id, o.order_date, o.customer, o.product, o.region,
         o.quantity, o.amount
  FROM generate_series(0, {copies} - 1) AS k, orders AS o ORDER BY 1;
ALTER TABLE orders_big ADD PRIMARY KEY (id);
CREATE INDEX ON orders_big (order_date);
GRANT SELECT ON orders_big TO taskbeam_export;
ANALYZE orders_big;
"""


def psql_owner(sql):
    return compose("exec", "-T", "postgres", "psql", "-X", "-q", "-At", "-U", "taskbeam",
                   "-v", "ON_ERROR_STOP=1", "-c", sql)  # fmt: skip


def big_table(rows):
    """The PostgreSQL table with ``rows`` rows: the demo's, or orders_big made for it."""
    if rows == 1_000_000:
        return "orders"
    if rows % 1_000_000:
        raise SystemExit("--rows: 1,000,000 or a multiple of it")
    exists = psql_owner("SELECT to_regclass('orders_big') IS NOT NULL").strip() == "t"
    if not exists or int(psql_owner("SELECT count(*) FROM orders_big")) != rows:
        print(f"building orders_big ({rows:,} rows) in PostgreSQL", flush=True)
        psql_owner(BIG_TABLE.format(copies=rows // 1_000_000))
    return "orders_big"


def compose(*args, stdin=None):
    done = subprocess.run(
        ["docker", "compose", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"docker compose {' '.join(args[:3])}... failed: {done.stderr[-2000:]}")
    return done.stdout


def worker_run(db, copy, fmt, rows, table):
    out = compose(
        "exec", "-T", "worker", "python", "-", db, "1" if copy else "0", fmt, str(rows), table,
        stdin=ONE_RUN,
    )  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def psql_run(select, fmt, rows):
    # By address: a one-off container of the service may answer to its name as well.
    server = compose("ps", "-q", "postgres").strip()
    host = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
         server], capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    sink = "cat" if fmt == "csv" else "gzip -c"
    out = compose(
        "run", "--rm", "--no-deps", "-T", "-e", f"COPY_SELECT={select}", "-e", f"SINK={sink}",
        "-e", f"PGHOST={host}", "--entrypoint", "sh", "postgres", "-c", PSQL,
    )  # fmt: skip
    seconds = int(out.strip().splitlines()[-1]) / 1e6
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows, table = args.rows, big_table(args.rows)
    select = compose("exec", "-T", "worker", "python", "-", str(rows), table, stdin=COPY_SQL)
    select = " ".join(select.split())
    cases = [
        ("SQLite", lambda fmt: worker_run("sqlite", False, fmt, rows, table)),
        ("PostgreSQL, generic path", lambda fmt: worker_run("postgres", False, fmt, rows, table)),
        ("PostgreSQL, COPY path", lambda fmt: worker_run("postgres", True, fmt, rows, table)),
        ("psql \\copy (the limit)", lambda fmt: psql_run(select, fmt, rows)),
    ]
    keys = [(name, fmt) for name, _ in cases for fmt in ("csv", "csv.gz")]
    # Round after round over every case, so a burst of load elsewhere hits all alike.
    runs = {key: [] for key in keys}
    for _ in range(args.repeat):
        for name, run in cases:
            for fmt in ("csv", "csv.gz"):
                runs[name, fmt].append(run(fmt))
    results = []
    for name, fmt in keys:
        rates = sorted(r["rows"] / r["seconds"] for r in runs[name, fmt])
        rss = [r["peak_rss_mb"] for r in runs[name, fmt] if r["peak_rss_mb"] is not None]
        results.append(
            {
                "case": name,
                "format": fmt,
                "rows": runs[name, fmt][0]["rows"],
                "rows_per_s": round(statistics.median(rates)),
                "rows_per_s_min_max": [round(rates[0]), round(rates[-1])],
                "peak_rss_mb": round(max(rss), 1) if rss else None,
            }
        )
        print(
            f"{name:28} {fmt:7} {results[-1]['rows']:>9,} rows  "
            f"{results[-1]['rows_per_s']:>10,} rows/s [{rates[0]:,.0f}-{rates[-1]:,.0f}]  "
            f"peak RSS {results[-1]['peak_rss_mb'] or '-'} MB",
            flush=True,
        )
    out = HERE / "results" / f"export-{rows}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "repeat": args.repeat, "export": results}))


if __name__ == "__main__":
    main()
