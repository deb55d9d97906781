"""Unit tests for the OpenAPI document served at /api/openapi.json."""
import json

from taskbeam import config
from taskbeam.web import openapi


def openapi_document():
    return openapi.openapi_document(config.load({"REDIS_URL": "redis://redis:6379/0"},
                                                need_secret=False))


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
    assert ["simulate"] in kinds and ["export"] in kinds


def test_json_serialisable():
    document = openapi_document()
    assert json.loads(json.dumps(document)) == document
