"""``GET /graphs/{name}/drawing``: a served graph's nodes and edges for the page's picture."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import httpx
import pytest
from fixtures.loopback import serving
from headwater_server import create_app

from headwater import END, START, StateGraph


class State(TypedDict, total=False):
    question: str
    answer: str


def looping_graph() -> Any:
    def plan(state: State) -> dict[str, Any]:
        return {}

    def act(state: State) -> dict[str, Any]:
        return {}

    def again(state: State) -> Literal["plan", "__end__"]:
        return END

    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("act", act)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "act")
    graph.add_conditional_edges("act", again)
    return graph.compile(name="loop")


def test_the_drawing_is_the_graphs_nodes_and_edges() -> None:
    with serving(create_app({"loop": looping_graph()})) as url:
        response = httpx.get(f"{url}/graphs/loop/drawing", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["graph"] == "loop"
    assert [n["id"] for n in body["nodes"]] == ["__start__", "plan", "act", "__end__"]
    assert all(n["data"]["name"] == n["id"] for n in body["nodes"])
    edges = {(e["source"], e["target"], e.get("conditional", False)) for e in body["edges"]}
    assert edges == {
        ("__start__", "plan", False),
        ("plan", "act", False),
        ("act", "plan", True),
        ("act", "__end__", True),
    }
    assert body["mermaid"].startswith("---") and "act -.-> plan;" in body["mermaid"]


def test_an_unknown_graph_is_a_404_naming_the_served_ones() -> None:
    with serving(create_app({"loop": looping_graph()})) as url:
        response = httpx.get(f"{url}/graphs/nope/drawing", timeout=10)
        odd = httpx.get(f"{url}/graphs/%00%2F..%2F/drawing", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_graph"
    assert "'nope'" in response.json()["detail"] and "['loop']" in response.json()["detail"]
    assert odd.status_code == 404 and odd.json()["error"] in ("unknown_graph", "not_found")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_only_get_draws(method: str) -> None:
    with serving(create_app({"loop": looping_graph()})) as url:
        response = httpx.request(method, f"{url}/graphs/loop/drawing", timeout=10)
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_the_drawing_needs_a_key_when_keys_are_set() -> None:
    with serving(create_app({"loop": looping_graph()}, api_keys=["alice-key"])) as url:
        bare = httpx.get(f"{url}/graphs/loop/drawing", timeout=10)
        wrong = httpx.get(
            f"{url}/graphs/loop/drawing", headers={"Authorization": "Bearer x"}, timeout=10
        )
        header = httpx.get(
            f"{url}/graphs/loop/drawing",
            headers={"Authorization": "Bearer alice-key"},
            timeout=10,
        )
        query = httpx.get(f"{url}/graphs/loop/drawing?api_key=alice-key", timeout=10)
        unknown = httpx.get(f"{url}/graphs/nope/drawing?api_key=alice-key", timeout=10)
    assert bare.status_code == wrong.status_code == 401
    assert bare.json()["error"] == "unauthorized"
    assert header.status_code == query.status_code == 200
    assert header.json()["graph"] == "loop"
    assert unknown.status_code == 404  # the graphs' names only to a client with a key


def test_the_drawing_is_in_the_openapi_description() -> None:
    with serving(create_app({"loop": looping_graph()})) as url:
        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert "get" in schema["paths"]["/graphs/{name}/drawing"]
