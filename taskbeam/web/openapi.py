"""The OpenAPI 3 document served at ``/api/openapi.json``, built from the job registry."""

from .. import config, export, jobs, protocol
from ..protocol import MAX_EVENTS_PAGE

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(*statuses):
    return {
        str(s): {"description": "Error", "content": {"application/json": {"schema": _ERROR}}}
        for s in statuses
    }


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def param_schemas(settings):
    return {"simulate": SIMULATE_PARAMS, "export": export_params_schema(settings)}


def export_params_schema(settings):
    date = {"type": "string", "format": "date"}
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Defaults export every row and column of the table as CSV.",
        "properties": {
            "date_from": {
                **date,
                "description": f"First {settings.export_date_column} (inclusive).",
            },
            "date_to": {**date, "description": f"Last {settings.export_date_column} (inclusive)."},
            "columns": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string", "enum": list(settings.export_columns)},
                "default": list(settings.export_columns),
            },
            "format": {"type": "string", "enum": list(export.FORMATS), "default": "csv"},
            "limit": {"type": "integer", "minimum": 1, "maximum": export.MAX_LIMIT},
        },
    }


SIMULATE_PARAMS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "steps": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 20},
        "step_ms": {"type": "integer", "minimum": 0, "maximum": 60_000, "default": 250},
        "fail_at": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10_000,
            "description": "Fail at this step (1..steps).",
        },
    },
}


def openapi_document(settings=None):
    settings = settings or config.current()
    schemas = param_schemas(settings)
    task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    snapshot = {"$ref": "#/components/schemas/Snapshot"}
    create_variants = [
        {
            "type": "object",
            "required": ["kind"],
            "additionalProperties": False,
            "properties": {"kind": {"type": "string", "enum": [kind]}, "params": schemas[kind]},
        }
        for kind in sorted(jobs.JOBS)
        if kind in schemas
    ]
    return {
        "openapi": "3.0.3",
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
                    "creation rate (with Retry-After); 429 `too_many_active` "
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
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {"200": {"description": "OK"}, **_error_responses(503)},
                }
            },
        },
        "components": {
            "schemas": {
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
                        "result": {"type": "object"},
                        "error": {"type": "object"},
                    },
                },
            }
        },
    }
