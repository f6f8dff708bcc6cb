"""The reference ASGI host (FastAPI) embedding one FeedPipeline: routes, admission and the
lifespan. A request's body is read and validated first (`limits`, `models`), then it takes an
in-flight slot or is shed with 503; the pipeline call runs on a worker thread (it releases the
GIL). The lifespan shutdown runs after uvicorn has drained the in-flight requests and flushes
and closes the event log."""

import contextlib
import logging
import threading
from typing import Any, AsyncIterator, Callable, Dict, Optional, Union

import anyio
import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

from fyp_core.server import errors
from fyp_core.server.limits import THREAD_POOL, Admission, HostLimits, bounded_route
from fyp_core.server.metrics import Metrics, MetricsMiddleware
from fyp_core.server.models import (
    EngageRequest,
    ErrorBody,
    FeedRequest,
    FeedResponse,
    Health,
    Ok,
    UploadRequest,
    exact_integer_bounds,
    upload_model,
)

__all__ = ["CatalogSyncThread", "create_app", "SnapshotThread"]

_log = logging.getLogger("fyp_core.server")

_E: Dict[str, Any] = {"model": ErrorBody}
_COMMON: Dict[Union[int, str], Dict[str, Any]] = {400: _E, 408: _E, 413: _E, 422: _E, 503: _E}


async def close_pipeline(pipeline: Any, timeout_s: float) -> bool:
    """Flush and close the pipeline's event log on a worker thread, waiting at most `timeout_s`.
    False (and an error logged) if it did not finish in time."""
    with anyio.move_on_after(timeout_s) as scope:
        await anyio.to_thread.run_sync(pipeline.close, abandon_on_cancel=True)
    if scope.cancelled_caught:
        _log.error("event log not closed within %.1f s; rows still queued may be lost", timeout_s)
        return False
    return True


class _Host:
    """The state the routes share: the pipeline, the admission gate and the metrics."""

    def __init__(self, pipeline: Any, limits: HostLimits, embedding_dim: Optional[int]) -> None:
        self.pipeline, self.limits, self.embedding_dim = pipeline, limits, embedding_dim
        self.snapshot_dir: Optional[str] = None
        self.snapshot_keep = 3
        self.admission = Admission(limits.max_inflight)
        self.metrics = Metrics(pipeline, self.admission, version=_version())

    async def call(self, route: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on a worker thread if a slot is free; 503 at once otherwise.
        The pipeline's own argument checks map to 400 (ValueError) and 404 (KeyError)."""
        if not self.admission.try_enter():
            self.metrics.shed(route)
            raise HTTPException(503, "overloaded, retry later", headers={"Retry-After": "1"})
        self.metrics.inflight.set(self.admission.inflight)
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0]) if e.args else "not found") from None
        except (ValueError, TypeError, OverflowError) as e:
            raise HTTPException(400, str(e)) from None
        finally:
            self.admission.leave()
            self.metrics.inflight.set(self.admission.inflight)

    def feed(self, body: FeedRequest) -> dict[str, Any]:
        resp = self.pipeline.feed(body.user_id, body.request_id, n=body.n)
        self.metrics.observe_feed(resp)
        return dict(resp.to_dict())

    def engage(self, body: EngageRequest) -> None:
        self.pipeline.engage(**body.model_dump())

    def upload(self, body: UploadRequest) -> None:
        with np.errstate(over="ignore"):
            emb = np.asarray(body.embedding, dtype=np.float32)
        if not np.isfinite(emb).all():
            raise ValueError("field 'embedding': values must fit in float32")
        self.pipeline.upload(body.item_id, emb, body.topic, body.creator, category=body.category)


def _add_routes(app: FastAPI, host: _Host) -> None:
    @app.post("/feed", response_model=FeedResponse, responses=_COMMON)
    async def feed(body: FeedRequest) -> Any:
        """A ranked, policy-checked feed of `n` slots for one user."""
        return await host.call("/feed", host.feed, body)

    @app.post("/engage", response_model=Ok, responses={**_COMMON, 404: _E})
    async def engage(body: EngageRequest) -> Ok:
        """Report what the user did with one served slot (by its impression id)."""
        await host.call("/engage", host.engage, body)
        return Ok()

    async def upload(body: UploadRequest) -> Ok:
        """Add or replace an item: retrievable by the next request (under a second)."""
        await host.call("/upload", host.upload, body)
        return Ok()

    # the body model pins the embedding length to the index dimension when it is known
    upload.__annotations__["body"] = upload_model(host.embedding_dim)
    app.post("/upload", response_model=Ok, responses=_COMMON)(upload)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> Any:
        """Readiness: 200 when the host takes traffic, 503 while shedding or draining."""
        adm = host.admission
        st = host.pipeline.stats()
        body = Health(
            status=adm.status(),  # type: ignore[arg-type]
            items=int(st.get("index_items", 0)),
            inflight=adm.inflight,
            max_inflight=adm.limit,
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        """Prometheus text exposition."""
        data, ctype = await anyio.to_thread.run_sync(host.metrics.render)
        return Response(data, media_type=ctype)


class CatalogSyncThread:
    """Applies the catalogue changes other hosts publish (uploads, take-downs) every `period_s`
    seconds while the host runs; only with a Redis tier. Failures (Redis down) are counted on
    `errors` and retried at the next tick; the pipeline counts gaps itself. With
    `snapshot_dir`, a gap (the stream trimmed past this host's position) reloads the newest
    snapshot there and replays the stream from it."""

    def __init__(self, pipeline: Any, period_s: float, snapshot_dir: Optional[str] = None) -> None:
        if not (period_s > 0):
            raise ValueError(f"catalog_sync_s must be > 0, got {period_s}")
        self.pipeline = pipeline
        self.period_s = period_s
        self.snapshot_dir = snapshot_dir
        self.errors = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        has_tier = "redis" in getattr(self.pipeline, "stats", dict)()
        if has_tier and hasattr(self.pipeline, "sync_catalog"):
            self._thread = threading.Thread(target=self._run, name="fyp-catalog-sync", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                while self.pipeline.sync_catalog(snapshot_dir=self.snapshot_dir)["applied"]:
                    pass
            except OSError:
                self.errors += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


class SnapshotThread:
    """Writes a host snapshot into `snapshot_dir` every `every_s` seconds (keeping the newest
    `keep`). A failed write is counted by the pipeline (``stats()["snapshots"]``, `/metrics`)
    and logged; the next tick tries again."""

    def __init__(self, pipeline: Any, snapshot_dir: str, every_s: float, keep: int) -> None:
        if not (every_s > 0):
            raise ValueError(f"snapshot_every_s must be > 0, got {every_s}")
        self.pipeline, self.dir, self.every_s, self.keep = pipeline, snapshot_dir, every_s, keep
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fyp-snapshot", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.pipeline.save_snapshot(self.dir, keep=self.keep)
            except (OSError, ValueError) as e:
                _log.error("snapshot into %s failed: %s", self.dir, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60.0)


def _add_admin_routes(app: FastAPI, host: _Host) -> None:
    @app.post("/admin/snapshot", include_in_schema=False)
    async def snapshot() -> Any:
        """Write a host snapshot now (index, item table, batch tier, stream position) into the
        host's snapshot directory; requests are served meanwhile."""
        if host.snapshot_dir is None:
            raise HTTPException(409, "this host has no snapshot directory (--snapshot-dir)")
        try:
            return await anyio.to_thread.run_sync(
                lambda: host.pipeline.save_snapshot(host.snapshot_dir, keep=host.snapshot_keep)
            )
        except (OSError, ValueError) as e:
            raise HTTPException(500, f"snapshot failed: {e}") from None

    @app.get("/admin/catalog", include_in_schema=False)
    async def catalog() -> Any:
        """The live catalogue's size and order-independent digest (equal on hosts that serve
        the same item set), and the index size."""
        n, digest = await anyio.to_thread.run_sync(host.pipeline.catalog_digest)
        st = host.pipeline.stats()
        return {"items": n, "digest": f"{digest:016x}", "index_items": st.get("index_items", 0)}


def create_app(
    pipeline: Any,
    max_inflight: Optional[int] = None,
    *,
    limits: Optional[HostLimits] = None,
    close_on_shutdown: bool = True,
    close_timeout_s: float = 30.0,
    embedding_dim: Optional[int] = None,
    catalog_sync_s: float = 0.2,
    snapshot_dir: Optional[str] = None,
    snapshot_every_s: float = 0.0,
    snapshot_keep: int = 3,
) -> FastAPI:
    """The ASGI app over `pipeline`. `limits` bounds each request (`HostLimits`);
    `max_inflight` overrides `limits.max_inflight` (default: sized from the cores, see
    `default_max_inflight`). With `close_on_shutdown`, the lifespan shutdown flushes and closes
    the pipeline's event log, waiting at most `close_timeout_s`. `embedding_dim` (the index
    dimension) makes the published schema pin the length of `/upload`'s embedding. With a
    Redis tier, a thread applies the other hosts' catalogue changes every `catalog_sync_s`
    seconds (`FeedPipeline.sync_catalog`). With `snapshot_dir`, `POST /admin/snapshot` writes
    a host snapshot there, a thread writes one every `snapshot_every_s` seconds (0: on demand
    only), the newest `snapshot_keep` are kept, and a stream gap reloads the newest one."""
    if snapshot_keep < 1:
        raise ValueError(f"snapshot_keep must be >= 1, got {snapshot_keep}")
    if snapshot_every_s < 0:
        raise ValueError(f"snapshot_every_s must be >= 0, got {snapshot_every_s}")
    lim = limits or HostLimits()
    if max_inflight is not None:
        if max_inflight <= 0:
            raise ValueError(f"max_inflight must be > 0, got {max_inflight}")
        lim = HostLimits(max_inflight, lim.max_body_bytes, lim.body_timeout_s, lim.max_json_depth)
    host = _Host(pipeline, lim.resolved(), embedding_dim)
    host.snapshot_dir, host.snapshot_keep = snapshot_dir, snapshot_keep

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # pipeline calls and JSON parsing share anyio's pool: keep room beyond max_inflight
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(THREAD_POOL, host.admission.limit + 8)
        host.admission.draining = False
        sync = CatalogSyncThread(pipeline, catalog_sync_s, snapshot_dir)
        sync.start()
        snaps = None
        if snapshot_dir is not None and snapshot_every_s > 0:
            snaps = SnapshotThread(pipeline, snapshot_dir, snapshot_every_s, snapshot_keep)
            snaps.start()
        yield
        host.admission.draining = True
        sync.stop()
        if snaps is not None:
            snaps.stop()
        if close_on_shutdown:
            await close_pipeline(pipeline, close_timeout_s)

    app = FastAPI(
        title="fyp-core feed host",
        summary="For You feed: serve, record engagement, upload items",
        version=_version(),
        lifespan=lifespan,
    )
    app.router.route_class = bounded_route(host.limits)
    app.openapi = _exact_openapi(app)  # type: ignore[method-assign]
    errors.install(app)
    _add_routes(app, host)
    _add_admin_routes(app, host)
    endpoints = [r.path for r in app.routes if hasattr(r, "path")]
    app.add_middleware(MetricsMiddleware, metrics=host.metrics, endpoints=endpoints)
    app.state.host = host
    return app


def _exact_openapi(app: FastAPI) -> Callable[[], Dict[str, Any]]:
    generate = app.openapi

    def openapi() -> Dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = exact_integer_bounds(generate())
        return app.openapi_schema

    return openapi


def _version() -> str:
    try:
        from fyp_core import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - the extension is not built
        return "0"
