"""Unit tests that the vendored browser code matches its recorded checksum."""

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor"


def test_socketio_checksum_matches_readme():
    readme = (VENDOR / "README.md").read_text()
    row = next(line for line in readme.splitlines() if "`socket.io-4.8.1.min.js`" in line)
    expected = re.search(r"`([0-9a-f]{64})`", row).group(1)
    actual = hashlib.sha256((VENDOR / "socket.io-4.8.1.min.js").read_bytes()).hexdigest()
    assert actual == expected


def test_licence_present():
    licence = VENDOR / "socket.io-LICENSE"
    assert licence.is_file()
    assert "MIT" in licence.read_text() or "Permission is hereby granted" in licence.read_text()
