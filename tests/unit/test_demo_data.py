"""Unit tests for the deterministic demo dataset in taskbeam.demo_data."""

import os
import sqlite3
from contextlib import closing
from datetime import date

from taskbeam import demo_data

PRICES = dict(demo_data.PRODUCTS)


def test_rows_are_deterministic():
    assert list(demo_data.rows(500)) == list(demo_data.rows(500))


def test_rows_have_ids_one_to_n_and_every_column():
    rows = list(demo_data.rows(300))
    assert [row[0] for row in rows] == list(range(1, 301))
    assert all(len(row) == len(demo_data.COLUMNS) for row in rows)


def test_dates_ascend_from_first_day_within_two_years():
    dates = [row[1] for row in demo_data.rows(2000)]
    assert dates[0] == "2024-01-01"
    assert dates == sorted(dates)
    assert all("2024-01-01" <= d <= "2025-12-31" for d in dates)
    assert all(date.fromisoformat(d).isoformat() == d for d in dates)


def test_quantity_and_amount_are_consistent():
    for _, _, _, product, region, quantity, amount in demo_data.rows(2000):
        assert 1 <= quantity <= 20
        assert amount == round(quantity * PRICES[product], 2)
        assert amount > 0
        assert region in demo_data.REGIONS


def test_build_writes_every_row_and_no_temp_file(tmp_path):
    path = tmp_path / "orders.sqlite3"
    demo_data.build(str(path), count=2000)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 2000
    assert os.listdir(tmp_path) == ["orders.sqlite3"]


def test_ensure_keeps_an_existing_file(tmp_path):
    path = tmp_path / "orders.sqlite3"
    demo_data.build(str(path), count=100)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert demo_data.ensure(str(path), count=200) == 0.0
    assert os.stat(path).st_mtime == 1_000_000_000
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 100


def test_ensure_builds_when_absent(tmp_path):
    path = tmp_path / "demo" / "orders.sqlite3"
    assert demo_data.ensure(str(path), count=50) > 0
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 50
    assert not [name for name in os.listdir(path.parent) if ".tmp" in name]
