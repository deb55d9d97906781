"""Unit tests for the OpenAPI document served at /api/openapi.json."""

import json

from taskbeam import config
from taskbeam.web import openapi


def openapi_document():
    return openapi.openapi_document(
        config.load({"REDIS_URL": "redis://redis:6379/0"}, need_secret=False)
    )


def test_openapi_version():
    assert openapi_document()["openapi"].startswith("3.")


def test_task_paths_present():
    paths = openapi_document()["paths"]
    assert "post" in paths["/api/tasks"] and "get" in paths["/api/tasks"]
    assert "get" in paths["/api/tasks/{task_id}"]
    assert "get" in paths["/api/tasks/{task_id}/events"]
    assert "post" in paths["/api/tasks/{task_id}/cancel"]
    assert "get" in paths["/api/tasks/{task_id}/download"]


def test_create_body_lists_simulate():
    body = openapi_document()["paths"]["/api/tasks"]["post"]["requestBody"]
    variants = body["content"]["application/json"]["schema"]["oneOf"]
    kinds = [v["properties"]["kind"]["enum"] for v in variants]
    assert ["simulate"] in kinds and ["export"] in kinds and ["primes"] in kinds
    assert ["count_primes"] not in kinds  # runs only as a workflow's child: not creatable


def test_json_serialisable():
    document = openapi_document()
    assert json.loads(json.dumps(document)) == document


def test_events_are_documented_as_paged():
    get = openapi_document()["paths"]["/api/tasks/{task_id}/events"]["get"]
    limit = next(p for p in get["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 500 and limit["schema"]["default"] == 500
    body = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"events", "has_more", "next_after"} <= set(body["properties"])
    assert "429" in get["responses"]


def test_create_documents_too_many_active():
    assert "too_many_active" in openapi_document()["paths"]["/api/tasks"]["post"]["description"]
