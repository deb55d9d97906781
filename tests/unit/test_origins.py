"""Unit tests for web.origin_allowed, the Socket.IO origin check."""

from types import SimpleNamespace

import pytest

from taskbeam.web import origin_allowed

OWN = "https://app.example"
SETTINGS = SimpleNamespace(allowed_origins=("https://partner.example", "http://localhost:3000"))


@pytest.mark.parametrize(
    "origin",
    [
        OWN,
        OWN + "/",
        "https://partner.example",
        "http://localhost:3000/",
    ],
)
def test_allowed(origin):
    assert origin_allowed(origin, SETTINGS, OWN)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example",  # other scheme
        "https://app.example:8443",  # other port
        "https://partner.example.evil",
        "",
        None,
        "null",
        "not a url",
        "://",
    ],
)
def test_refused(origin):
    assert not origin_allowed(origin, SETTINGS, OWN)


def test_garbage_refused_even_if_listed():
    assert not origin_allowed("garbage", SimpleNamespace(allowed_origins=("garbage",)), OWN)
