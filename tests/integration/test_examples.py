"""The example models shipped in examples/models serve as README's first command serves them:
from a model store named relative to the working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config, wait_until

REPO = Path(__file__).resolve().parents[2]


async def test_shipped_examples_serve_from_a_relative_model_store(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    server = await server_factory(make_config(Path("examples/models"), load_models="all"))
    listed = (await server.management.get("/models")).json()["models"]
    assert {m["modelName"] for m in listed} == {"echo", "tiny_cnn"}

    async def ready(name: str) -> bool:
        [described] = (await server.management.get(f"/models/{name}")).json()
        states = [w["status"] for w in described["workers"]]
        return bool(states) and all(state == "READY" for state in states)

    for name in ("echo", "tiny_cnn"):
        await wait_until(lambda name=name: ready(name))  # a load that fails never gets there
    image = [[0.5] * 8 for _ in range(8)]
    response = await server.inference.post("/predictions/tiny_cnn", json={"data": image})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert 0 <= answer["class"] < len(answer["probabilities"])
    echoed = await server.inference.post("/predictions/echo", content=b"hello")
    assert (echoed.status_code, echoed.content) == (200, b"hello")
