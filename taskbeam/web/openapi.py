"""The OpenAPI 3 document served at ``/api/openapi.json``, built from the job registry."""

import json

from .. import config, protocol, registry
from ..protocol import MAX_CHILDREN_PAGE, MAX_EVENTS_PAGE

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(*statuses):
    return {
        str(s): {"description": "Error", "content": {"application/json": {"schema": _ERROR}}}
        for s in statuses
    }


def _int_query(name, low, high, default):
    schema = {"type": "integer", "minimum": low, "maximum": high, "default": default}
    return {"name": name, "in": "query", "schema": schema}


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _with_components(kind, schema, components):
    """``schema`` with its ``$defs`` moved into ``components`` (named per kind)."""
    moved = json.loads(json.dumps(schema).replace('"#/$defs/', f'"#/components/schemas/{kind}.'))
    for name, definition in moved.pop("$defs", {}).items():
        components[f"{kind}.{name}"] = definition
    return moved


def _creatable():
    """The kinds ``POST /api/tasks`` takes (not those that run only as children)."""
    return sorted(kind for kind, job in registry.JOBS.items() if job.listed)


def param_schemas(settings, components):
    """Each creatable kind's params schema, generated from its declaration."""
    return {
        kind: _with_components(kind, registry.JOBS[kind].schema(settings), components)
        for kind in _creatable()
    }


def openapi_document(settings=None):
    settings = settings or config.current()
    kind_components = {}
    schemas = param_schemas(settings, kind_components)
    task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    snapshot = {"$ref": "#/components/schemas/Snapshot"}
    create_variants = [
        {
            "type": "object",
            "required": ["kind"],
            "additionalProperties": False,
            "properties": {"kind": {"type": "string", "enum": [kind]}, "params": schemas[kind]},
        }
        for kind in _creatable()
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Taskbeam",
            "version": "1",
            "description": "Requests whose Host is not allowed (ALLOWED_HOSTS) get 421 "
            "`misdirected_request`; task ids not shaped like the ones the server "
            "makes (16 characters of A-Z a-z 0-9 _ -) get 404 `not_found`.",
        },
        "paths": {
            "/api/tasks": {
                "post": {
                    "summary": "Start a task",
                    "requestBody": {"required": True, **_json({"oneOf": create_variants})},
                    "description": "429 `rate_limited` past the per-session or per-address "
                    "creation rate (with Retry-After; a workflow counts itself and each "
                    "child, and one that could never fit is a 400); 429 `too_many_active` "
                    "while the session has MAX_ACTIVE_TASKS queued or running "
                    "tasks.",
                    "responses": {
                        "202": {"description": "Accepted", **_json(snapshot)},
                        **_error_responses(400, 403, 413, 415, 429, 503),
                    },
                },
                "get": {
                    "summary": "The session's tasks, newest first",
                    "responses": {
                        "200": {
                            "description": "OK",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {"tasks": {"type": "array", "items": snapshot}},
                                }
                            ),
                        }
                    },
                },
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "summary": "One task's snapshot",
                    "parameters": [task_id],
                    "responses": {
                        "200": {"description": "OK", **_json(snapshot)},
                        **_error_responses(404),
                    },
                },
                "delete": {
                    "summary": "Clear a finished task and its events",
                    "description": "409 `not_finished` unless the task is succeeded, "
                    "failed or cancelled.",
                    "parameters": [task_id],
                    "responses": {
                        "204": {"description": "Removed"},
                        **_error_responses(404, 409),
                    },
                },
            },
            "/api/tasks/{task_id}/events": {
                "get": {
                    "summary": "Stored events after a seq, one page at a time",
                    "description": "While `has_more` is true, ask again with "
                    "`after=next_after`. Reads are rate-limited per address "
                    "(429 `rate_limited`).",
                    "parameters": [
                        task_id,
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 10**18 - 1,
                                "default": 0,
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_EVENTS_PAGE,
                                "default": MAX_EVENTS_PAGE,
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["events", "has_more", "next_after"],
                                    "properties": {
                                        "events": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Event"},
                                        },
                                        "has_more": {
                                            "type": "boolean",
                                            "description": "More events follow this page.",
                                        },
                                        "next_after": {
                                            "type": "integer",
                                            "description": "The last seq in this page "
                                            "(`after` if empty).",
                                        },
                                    },
                                }
                            ),
                        },
                        **_error_responses(400, 404, 429),
                    },
                }
            },
            "/api/tasks/{task_id}/children": {
                "get": {
                    "summary": "A workflow's children, one page at a time, in its plan's order",
                    "parameters": [
                        task_id,
                        _int_query("offset", 0, 1_000_000, 0),
                        _int_query("limit", 1, MAX_CHILDREN_PAGE, 50),
                    ],
                    "responses": {
                        "200": {
                            "description": "OK (`total` 0 for a task that is not a workflow)",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["total", "offset", "children"],
                                    "properties": {
                                        "total": {"type": "integer"},
                                        "offset": {"type": "integer"},
                                        "children": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Snapshot"},
                                        },
                                    },
                                }
                            ),
                        },
                        **_error_responses(400, 404),
                    },
                }
            },
            "/api/tasks/{task_id}/download": {
                "get": {
                    "summary": "Download a finished export (served by Nginx)",
                    "parameters": [task_id],
                    "responses": {
                        "200": {"description": "The file, as an attachment"},
                        **_error_responses(404, 410),
                    },
                }
            },
            "/api/tasks/{task_id}/cancel": {
                "post": {
                    "summary": "Cancel a task",
                    "parameters": [task_id],
                    "responses": {
                        "202": {"description": "Accepted", **_json(snapshot)},
                        **_error_responses(404, 409, 415),
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}
            },
            "/api/kinds": {
                "get": {
                    "summary": "The job kinds this deployment runs, each with its params' "
                    "JSON Schema (the page builds its forms from it)",
                    "responses": {
                        "200": {
                            "description": "OK",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "kinds": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": ["kind", "title", "units", "schema"],
                                                "properties": {
                                                    "kind": {"type": "string"},
                                                    "title": {"type": "string"},
                                                    "description": {"type": "string"},
                                                    "units": {"type": "string"},
                                                    "stages": {
                                                        "type": "array",
                                                        "items": {"type": "object"},
                                                    },
                                                    "workflow": {"type": "boolean"},
                                                    "schema": {"type": "object"},
                                                },
                                            },
                                        }
                                    },
                                }
                            ),
                        },
                        **_error_responses(401),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {"200": {"description": "OK"}, **_error_responses(503)},
                }
            },
        },
        "components": {
            "schemas": {
                **kind_components,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Snapshot": {
                    "type": "object",
                    "required": [
                        "id",
                        "kind",
                        "state",
                        "progress",
                        "message",
                        "seq",
                        "created_at",
                        "updated_at",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "state": {"type": "string", "enum": list(protocol.STATES)},
                        "progress": {"type": "number", "minimum": 0, "maximum": 100},
                        "message": {"type": "string"},
                        "seq": {"type": "integer"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "worker": {
                            "type": "string",
                            "description": "Host name of the worker that ran it.",
                        },
                        "started_at": {"type": "string", "format": "date-time"},
                        "finished_at": {"type": "string", "format": "date-time"},
                        "params": {"type": "object", "description": "As validated."},
                        "queue_position": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "While queued: place among all tasks not "
                            "started yet (1 = next).",
                        },
                        "stage": {"type": "string", "description": "While running."},
                        "children": {
                            "type": "object",
                            "description": "A workflow's children: total, done, failed.",
                        },
                        "parent": {"type": "string", "description": "A child's workflow."},
                        "result": {"type": "object"},
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["task_id", "seq", "state", "progress", "message", "ts"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "seq": {"type": "integer"},
                        "state": {"type": "string", "enum": list(protocol.STATES)},
                        "progress": {"type": "number"},
                        "message": {"type": "string"},
                        "ts": {"type": "number"},
                        "done": {
                            "type": "number",
                            "description": "A progress report's count done (rows, steps).",
                        },
                        "total": {"type": "number", "description": "The report's total."},
                        "stage": {"type": "string", "description": "The current stage."},
                        "result": {"type": "object"},
                        "error": {"type": "object"},
                    },
                },
            }
        },
    }
