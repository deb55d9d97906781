"""Property-based fuzzing of the REST API from its own OpenAPI document, through Nginx:
no 5xx, and every error in the contract's JSON shape."""

import json
import re
from urllib.parse import quote

import pytest
import requests
from conftest import BASE_URL, Api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def document():
    return requests.get(f"{BASE_URL}/api/openapi.json", timeout=10).json()


def operations():
    return [(method.upper(), path) for path, item in document()["paths"].items() for method in item]


def schema_values(schema):
    """Values around what a property schema allows: in range, at and past its bounds."""
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum", -5), schema.get("maximum", 5)
        return st.sampled_from([low - 1, low, high, high + 1]) | st.integers(low - 10, high + 10)
    if kind == "string" and schema.get("format") == "date":
        return st.dates().map(str) | st.text(max_size=12)
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=8)
    if kind == "array":
        return st.lists(schema_values(schema["items"]), max_size=4)
    return json_values


def create_bodies():
    variants = document()["paths"]["/api/tasks"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["oneOf"]
    strategies = []
    for variant in variants:
        props = variant["properties"]["params"]["properties"]
        params = st.dictionaries(
            st.sampled_from(sorted(props)) | st.text(max_size=8), json_values, max_size=5
        )
        typed = st.fixed_dictionaries(
            {}, optional={name: schema_values(schema) for name, schema in props.items()}
        )
        strategies.append(
            st.fixed_dictionaries(
                {
                    "kind": st.sampled_from(variant["properties"]["kind"]["enum"]) | json_values,
                    "params": params | typed | json_values,
                }
            )
        )
    return st.one_of(*strategies) | json_values


def assert_contract_shape(response):
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert SNAKE.match(body["error"]["code"]) and isinstance(body["error"]["message"], str)


@pytest.fixture(scope="module")
def fuzzer():
    api = Api()
    yield api
    # Cancel whatever the fuzzing started, so later tests find idle workers.
    for task in api.request("GET", "/api/tasks").json()["tasks"]:
        api.request("POST", f"/api/tasks/{task['id']}/cancel", json={})
    api.http.close()


@FUZZ
@given(body=create_bodies())
def test_creating_tasks_with_generated_bodies(fuzzer, body):
    response = fuzzer.request(
        "POST", "/api/tasks", data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert_contract_shape(response)
    if response.status_code == 202:
        fuzzer.request("POST", f"/api/tasks/{response.json()['id']}/cancel", json={})
    else:
        assert response.status_code in (400, 429), response.text


@FUZZ
@given(
    op=st.sampled_from(operations()),
    task_id=st.text(min_size=1, max_size=40),
    after=st.text(max_size=12) | st.integers(-5, 10**20).map(str),
    body=json_values,
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
    ),
)
def test_every_operation_with_generated_ids_queries_and_bodies(
    fuzzer, op, task_id, after, body, content_type
):
    method, path = op
    url = path.replace("{task_id}", quote(task_id, safe=""))
    data = json.dumps(body) if content_type == "application/json" else str(body)
    response = fuzzer.request(
        method,
        url,
        params={"after": after},
        data=data if method == "POST" else None,
        headers={"Content-Type": content_type} if content_type else {},
    )
    assert_contract_shape(response)
