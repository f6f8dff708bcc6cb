"""``fyp-core serve``: the reference HTTP host (FastAPI) embedding one FeedPipeline.

Routes: ``POST /feed``, ``POST /engage``, ``POST /upload``, ``GET /healthz`` (readiness),
``GET /metrics`` (Prometheus), ``GET /docs`` and ``/openapi.json``. Limits, shutdown and sizing:
docs/host.md.
"""

from fyp_core.server.app import close_pipeline, create_app
from fyp_core.server.limits import HostLimits, default_max_inflight

__all__ = ["HostLimits", "close_pipeline", "create_app", "default_max_inflight"]
