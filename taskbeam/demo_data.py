"""The demo dataset: a deterministic ``orders`` table in SQLite (or PostgreSQL).

Created on first start when absent (``python -m taskbeam.demo_data PATH``), so
``make up`` needs nothing else. Several containers may start at once: a file
lock lets one build it, into a temporary file renamed into place when complete,
so nobody ever reads a half-written database.

``python -m taskbeam.demo_data --postgres`` loads the same rows into PostgreSQL
(``postgres/compose.yml`` runs it once per start): see :func:`load_postgres`.
"""

import fcntl
import os
import random
import sqlite3
import sys
import time
from datetime import date, timedelta

DEFAULT_ROWS = 1_000_000
FIRST_DAY = date(2024, 1, 1)
DAYS = 731  # 2024-01-01 .. 2025-12-31
REGIONS = ("North", "South", "East", "West", "Central", "Coastal", "Highlands", "Islands")
PRODUCTS = tuple(
    (f"{kind} {size}", price)
    for kind, base in (
        ("Widget", 4.5),
        ("Gadget", 12.0),
        ("Gizmo", 7.25),
        ("Doohickey", 2.8),
        ("Sprocket", 1.15),
        ("Flange", 3.4),
        ("Valve", 18.9),
        ("Bracket", 0.95),
        ("Hinge", 1.6),
        ("Lever", 5.3),
    )
    for size, price in (
        ("S", base),
        ("M", round(base * 1.5, 2)),
        ("L", round(base * 2.2, 2)),
        ("XL", round(base * 3.1, 2)),
        ("Pro", round(base * 4.8, 2)),
    )
)
CUSTOMERS = 5000
COLUMNS = ("id", "order_date", "customer", "product", "region", "quantity", "amount")

SCHEMA = """
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    order_date TEXT NOT NULL,      -- ISO date, YYYY-MM-DD
    customer TEXT NOT NULL,
    product TEXT NOT NULL,
    region TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    amount REAL NOT NULL
);
"""


def rows(count, seed=20241):
    """The dataset's rows in id order; dates ascend evenly over two years."""
    rng = random.Random(seed)
    days = [(FIRST_DAY + timedelta(days=d)).isoformat() for d in range(DAYS)]
    customers = [f"Customer {n:04d}" for n in range(1, CUSTOMERS + 1)]
    for i in range(count):
        product, price = PRODUCTS[rng.randrange(len(PRODUCTS))]
        quantity = rng.randint(1, 20)
        yield (
            i + 1,
            days[i * DAYS // count],
            customers[rng.randrange(CUSTOMERS)],
            product,
            REGIONS[rng.randrange(len(REGIONS))],
            quantity,
            round(quantity * price, 2),
        )


def build(path, count=DEFAULT_ROWS):
    """Write the database to ``path`` atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        db = sqlite3.connect(tmp)
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", rows(count))
        db.execute("CREATE INDEX orders_order_date ON orders (order_date)")
        db.commit()
        db.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure(path, count=DEFAULT_ROWS):
    """Build the dataset at ``path`` unless it exists; returns seconds spent building."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other starters wait, then find it built
        if os.path.exists(path):
            return 0.0
        started = time.monotonic()
        build(path, count)
        return time.monotonic() - started


# The same table in PostgreSQL, with real types: a DATE the index serves and money
# as NUMERIC (both export paths print it as 12.50, as stored).
PG_SCHEMA = """
CREATE TABLE orders (
    id integer PRIMARY KEY,
    order_date date NOT NULL,
    customer text NOT NULL,
    product text NOT NULL,
    region text NOT NULL,
    quantity integer NOT NULL,
    amount numeric(10, 2) NOT NULL
);
"""
EXPORT_ROLE = "taskbeam_export"


def load_postgres(url, count=DEFAULT_ROWS, export_password=None):
    """Create and fill ``orders`` in PostgreSQL unless it exists; set up the export role.

    One transaction: the table, its rows (COPY), the date index and the statistics
    appear together or not at all, so a loader killed half-way leaves nothing and
    the next start loads again. ``export_password`` (re)sets the read-only role the
    workers log in as. Returns the seconds spent loading (0 when the table existed).
    """
    import psycopg
    from psycopg import sql

    started = time.monotonic()
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(20241)")  # one loader at a time
        absent = conn.execute("SELECT to_regclass('orders') IS NULL").fetchone()[0]
        if absent:
            conn.execute(PG_SCHEMA)
            with conn.cursor().copy(f"COPY orders ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows(count):
                    copy.write_row(row)
            conn.execute("CREATE INDEX orders_order_date ON orders (order_date)")
            conn.execute("ANALYZE orders")  # the planner knows the index pays off at once
        if export_password:
            role = sql.Identifier(EXPORT_ROLE)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [EXPORT_ROLE])
            if not exists.fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            for statement in (
                "ALTER ROLE {} PASSWORD {}",
                # Read-only whatever the client asks; a session a dead worker left
                # inside a transaction is ended by the server.
                "ALTER ROLE {} SET default_transaction_read_only = on",
                "ALTER ROLE {} SET idle_in_transaction_session_timeout = '60s'",
                "GRANT CONNECT ON DATABASE {db} TO {}",
                "GRANT USAGE ON SCHEMA public TO {}",
                "GRANT SELECT ON orders TO {}",
            ):
                params = [role, sql.Literal(export_password)] if "PASSWORD" in statement else [role]
                db = sql.Identifier(conn.info.dbname)
                conn.execute(sql.SQL(statement).format(*params, db=db))
    return time.monotonic() - started if absent else 0.0


if __name__ == "__main__":
    count = int(os.environ.get("DEMO_ROWS", DEFAULT_ROWS))
    if sys.argv[1] == "--postgres":
        spent = load_postgres(
            os.environ["DEMO_DATABASE_URL"], count, os.environ.get("EXPORT_ROLE_PASSWORD")
        )
        if spent:
            print(
                f"taskbeam: loaded the demo dataset ({count} orders) into PostgreSQL "
                f"in {spent:.0f}s"
            )
        raise SystemExit(0)
    target = sys.argv[1]
    spent = ensure(target, count)
    if spent:
        print(f"taskbeam: built the demo dataset ({count} orders) in {spent:.1f}s at {target}")
