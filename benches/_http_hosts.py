"""Two hosts over the same stub pipeline, for measuring what the HTTP layer itself costs:
``new`` is ``fyp_core.server.create_app`` (FastAPI, pydantic, bounded body, metrics); ``old`` is
the previous hand-validated Starlette handler path (json.loads on the loop, hand checks, lock
gate, latency histogram, thread call). The stub answers a 20-slot feed without any work.

    python benches/_http_hosts.py old|new PORT
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import anyio
import uvicorn
from prometheus_client import CollectorRegistry, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TASKS = ["p_finish", "p_like", "p_share", "p_follow", "p_skip", "watch_seconds"]


class StubResponse:
    def __init__(self, request_id: str, n: int) -> None:
        self.request_id, self.n = request_id, n
        self.timings = {"candidates": 1.0, "ranker": 2.0}
        self.sources = ["ranked"] * n
        self.model_version = "stub-v1"
        self.shadow_predictions: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        slots = [
            {"item_id": 1000 + i, "position": i, "source": "ranked", "propensity": 1.0,
             "impression_id": f"{self.request_id}:{i}", "topic": i % 7, "creator": 50 + i,
             "value": 0.5, "predictions": {t: 0.25 for t in TASKS}, "model_version": "stub-v1"}
            for i in range(self.n)
        ]  # fmt: skip
        return {"request_id": self.request_id, "model_version": "stub-v1", "slots": slots,
                "relaxed": {}, "timings_ms": dict(self.timings)}  # fmt: skip


class StubPipeline:
    def feed(self, user_id: str, request_id: str, n: int = 20) -> StubResponse:
        return StubResponse(request_id, n)

    def stats(self) -> dict[str, Any]:
        return {"index_items": 1000}

    def close(self) -> None:
        pass


def old_app(pipe: StubPipeline, max_inflight: int = 64) -> Starlette:
    hist = Histogram("lat_ms", "", ["route"], registry=CollectorRegistry())
    gate, state = threading.Lock(), {"inflight": 0}

    def do_feed(body: dict[str, Any]) -> dict[str, Any]:
        for name in ("user_id", "request_id"):
            if not isinstance(body.get(name), str) or not 0 < len(body[name]) <= 256:
                raise ValueError(f"field {name!r} must be 1-256 chars")
        n = body.get("n", 20)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 200:
            raise ValueError("field 'n' must be in [1, 200]")
        return pipe.feed(body["user_id"], body["request_id"], n=n).to_dict()

    async def feed(request: Request) -> Response:
        with gate:
            if state["inflight"] >= max_inflight:
                return JSONResponse({"error": "overloaded"}, status_code=503)
            state["inflight"] += 1
        try:
            with hist.labels("feed").time():
                body = json.loads(await request.body())
                out = await anyio.to_thread.run_sync(do_feed, body)
            return JSONResponse(out)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        finally:
            with gate:
                state["inflight"] -= 1

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/feed", feed, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])])  # fmt: skip


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "old":
        app: Any = old_app(StubPipeline())
    else:
        from fyp_core.server import create_app

        app = create_app(StubPipeline(), max_inflight=64)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
