"""The published OpenAPI schema is the contract: schemathesis generates requests from it (valid
and invalid), and every response must be a non-5xx, documented status whose body matches the
schema. Bounded by hypothesis settings (seconds, not minutes, on two cores)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from test_pipeline import build

from fyp_core.server import create_app
from fyp_core.synth import make_world

schemathesis = pytest.importorskip("schemathesis")


def _app():
    world = make_world(n_items=2000, n_users=100, seed=6, now=1.8e9)
    return create_app(
        build(world, candidates=100),
        max_inflight=4,
        embedding_dim=world.dim,
        close_on_shutdown=False,
    )


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_response_matches_the_schema(case) -> None:
    case.call_and_validate()


def test_schema_documents_every_route() -> None:
    world = make_world(n_items=200, n_users=10, seed=6, now=1.8e9)
    spec = create_app(build(world, candidates=50), embedding_dim=world.dim).openapi()
    assert set(spec["paths"]) == {"/feed", "/engage", "/upload", "/healthz", "/metrics"}
    upload = spec["components"]["schemas"]["UploadRequest"]["properties"]["embedding"]
    assert upload["minItems"] == upload["maxItems"] == world.dim
    for path in ("/feed", "/engage", "/upload"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "422", "503"} <= set(responses)
