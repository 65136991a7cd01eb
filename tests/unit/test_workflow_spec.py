"""Workflow spec parsing and DAG checks (contract §2.7): sans-IO, no sockets."""

from __future__ import annotations

import itertools

import pytest

from tests.unit.test_layering import modules, violations
from trioserve.workflows.dag import build_dag, java_map_text
from trioserve.workflows.errors import InvalidDag, InvalidWorkflow
from trioserve.workflows.spec import NodeSettings, handler_functions, parse_spec

SPEC = """
models:
  min-workers: 2
  max-workers: 4
  batch-size: 3
  max-batch-delay: 5000
  retry-attempts: 3
  timeout-ms: 5000
  m1:
    url: model1.mar
    min-workers: 1
    max-workers: 2
    batch-size: 4
  m2:
    url: https://example.com/model2.mar
    timeout-ms: 250
    retry-attempts: 0
dag:
  pre: [m1, m2]
  m1: [post]
  m2: [post]
"""


def test_globals_and_per_model_overrides() -> None:
    spec = parse_spec(SPEC)
    assert spec.defaults == NodeSettings(2, 4, 3, 5000, 3, 5000)
    assert spec.models["m1"].url == "model1.mar"
    assert spec.models["m1"].settings == NodeSettings(1, 2, 4, 5000, 3, 5000)
    assert spec.models["m2"].settings == NodeSettings(2, 4, 3, 5000, 0, 250)
    assert spec.edges == (("pre", ("m1", "m2")), ("m1", ("post",)), ("m2", ("post",)))


def test_defaults_are_torchserve_ones_and_functions_take_only_retry_and_timeout() -> None:
    spec = parse_spec("models:\n  retry-attempts: 2\n  batch-size: 8\ndag:\n  pre: []\n")
    assert NodeSettings() == NodeSettings(1, 1, 1, 50, 1, 10000)
    assert spec.settings("pre") == NodeSettings(1, 1, 1, 0, 2, 10000)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "expected a mapping"),
        ("models: {}\n", "dag must be a mapping"),
        ("dag: {}\n", "dag must be a mapping"),
        ("models:\n  m1: {min-workers: 1}\ndag:\n  m1: []\n", "model m1 has no url"),
        ("models:\n  batch-size: 0\ndag:\n  a: []\n", "models: batch-size is 0"),
        ("models:\n  timeout-ms: fast\ndag:\n  a: []\n", "models: timeout-ms is 'fast'"),
        ("models:\n  retry-attempts: true\ndag:\n  a: []\n", "retry-attempts is True"),
        (
            "models:\n  m1: {url: a.mar, min-workers: 3, max-workers: 1}\ndag:\n  m1: []\n",
            "model m1 max-workers (1) is less than min-workers (3)",
        ),
        ("dag: [\n", "not YAML"),
    ],
)
def test_bad_specs_are_refused_with_the_key(text: str, fragment: str) -> None:
    with pytest.raises(InvalidWorkflow) as caught:
        parse_spec(text)
    assert fragment in str(caught.value.message)


def test_bad_node_names_and_successor_lists_are_refused() -> None:
    with pytest.raises(InvalidDag, match="node 'a/b' is not a valid name"):
        parse_spec("dag:\n  a/b: []\n")
    with pytest.raises(InvalidDag, match="successors of node a must be a list"):
        parse_spec("dag:\n  a: b\n")


def test_handler_functions_are_read_not_imported() -> None:
    source = "import os\nos._exit(1)\ndef pre(d, c): pass\nasync def no(d, c): pass\nX = 1\n"
    assert handler_functions(source, "h.py") == {"pre"}
    with pytest.raises(InvalidWorkflow, match=r"h\.py is not valid Python"):
        handler_functions("def (:", "h.py")


def test_dag_order_predecessors_start_and_leaves() -> None:
    spec = parse_spec(SPEC)
    dag = build_dag(spec.edges, spec.models.keys(), {"pre", "post"})
    assert dag.start == "pre"
    assert dag.nodes == ("pre", "m1", "m2", "post")
    assert dag.predecessors["post"] == ("m1", "m2")
    assert dag.successors["pre"] == ("m1", "m2")
    assert dag.leaves == ("post",)
    assert java_map_text(dag.edges) == "{pre=[m1, m2], m1=[post], m2=[post]}"


def test_several_leaves_are_allowed() -> None:
    dag = build_dag([("a", ["b", "c"])], (), {"a", "b", "c"})
    assert dag.leaves == ("b", "c")


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([("a", ["b"]), ("b", ["c"]), ("c", ["b"])], "node b is on a cycle: b -> c -> b."),
        ([("a", ["a"])], "node a is on a cycle: a -> a."),
        ([("a", ["b"]), ("b", ["a"])], "node a is on a cycle: a -> b -> a."),
        (
            [("a", ["ghost"])],
            "node ghost is neither a model of the models section nor a function",
        ),
        ([("a", ["c"]), ("b", ["c"])], "node b has no path from the start node a"),
        ([], "the dag section has no nodes"),
    ],
)
def test_invalid_dags_name_the_node(edges: list[tuple[str, list[str]]], message: str) -> None:
    with pytest.raises(InvalidDag) as caught:
        build_dag(edges, (), {"a", "b", "c"})
    assert caught.value.code == 400
    assert caught.value.type_name == "InvalidDAGException"
    assert message in str(caught.value.message)


def test_a_long_chain_does_not_exhaust_the_stack() -> None:
    names = [f"n{i}" for i in range(5000)]
    edges = [(a, [b]) for a, b in itertools.pairwise(names)]
    dag = build_dag(edges, set(names), ())
    assert dag.nodes[0] == "n0"
    assert dag.leaves == ("n4999",)


def test_workflow_layers() -> None:
    """spec and dag are sans-IO; nothing in trioserve/workflows reaches up into the API layer,
    the server or the command line (DESIGN §5, checked as tests/unit/test_layering.py does)."""
    sans_io = modules("trioserve/workflows/spec.py", "trioserve/workflows/dag.py")
    assert violations(sans_io, ("trio", "socket", "ssl", "h11", "trioserve.models")) == []
    upper = ("trioserve.api", "trioserve.server", "trioserve.cli", "trioserve.grpc")
    assert violations(modules("trioserve/workflows"), upper) == []
