"""Unit tests for the OpenAPI document served at /api/openapi.json."""
import json

from taskbeam.web.openapi import openapi_document


def test_openapi_version():
    assert openapi_document()["openapi"].startswith("3.")


def test_task_paths_present():
    paths = openapi_document()["paths"]
    assert "post" in paths["/api/tasks"] and "get" in paths["/api/tasks"]
    assert "get" in paths["/api/tasks/{task_id}"]
    assert "get" in paths["/api/tasks/{task_id}/events"]
    assert "post" in paths["/api/tasks/{task_id}/cancel"]


def test_create_body_lists_simulate():
    body = openapi_document()["paths"]["/api/tasks"]["post"]["requestBody"]
    variants = body["content"]["application/json"]["schema"]["oneOf"]
    assert {"const": "simulate"} in [v["properties"]["kind"] for v in variants]


def test_json_serialisable():
    document = openapi_document()
    assert json.loads(json.dumps(document)) == document
