"""Request bounds of the reference host: body size and read time are checked while the body
streams in, before a request may take an in-flight slot; JSON is parsed on a worker thread, so a
large or slow body never stalls the event loop nor holds capacity meant for real work."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

import anyio
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "Admission",
    "bounded_route",
    "BoundedRequest",
    "default_max_inflight",
    "HostLimits",
    "parse_json",
    "THREAD_POOL",
]

# anyio's default worker-thread pool, which runs the pipeline calls and the JSON parsing
THREAD_POOL = 40


def default_max_inflight(cores: int | None = None) -> int:
    """Four concurrent pipeline calls per core, never more than the worker pool.

    The pipeline is CPU bound and releases the GIL, so `cores` calls run at once and each extra
    one waits about a service time divided by `cores`; four per core keeps that queue a few
    service times deep (tens of ms at ~10 ms per request), far inside a 200 ms SLO, and past it
    the host answers 503 at once instead of queueing."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(4 * cores, THREAD_POOL - 8))


@dataclass(frozen=True)
class HostLimits:
    """What one request may cost the host. `max_inflight`: pipeline calls at once (503 past
    it); `max_body_bytes`: 413 above; `body_timeout_s`: the whole body must arrive within this
    (408 otherwise); `max_json_depth`: nesting beyond it is refused with 400."""

    max_inflight: int = 0  # 0: default_max_inflight()
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 5.0
    max_json_depth: int = 64

    def resolved(self) -> HostLimits:
        for name in ("max_body_bytes", "max_json_depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_inflight < 0:
            raise ValueError(f"max_inflight must be >= 0 (0: default), got {self.max_inflight}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.max_inflight:
            return self
        return HostLimits(
            default_max_inflight(), self.max_body_bytes, self.body_timeout_s, self.max_json_depth
        )


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    """True if brackets nest deeper than `limit` (strings skipped), found in one linear scan
    so a pathological body is refused before the recursive parser sees it."""
    depth, in_str, esc = 0, False, False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:  # quote
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_json(raw: bytes, max_depth: int) -> Any:
    """`json.loads` with the host's depth bound and a message for bytes that are not UTF-8."""
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth_exceeds(raw, max_depth):
        raise HTTPException(400, f"body nests deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as e:  # e.g. an integer past the digit limit
        raise HTTPException(400, f"body is not valid JSON: {e}") from None


class BoundedRequest(Request):
    """A Request whose body is read under the host's size and time limits and whose JSON is
    parsed on a worker thread (FastAPI reads bodies through `body()` and `json()`)."""

    limits: HostLimits = HostLimits()

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            lim = self.limits
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > lim.max_body_bytes:
                raise HTTPException(413, f"body is {declared} bytes, limit {lim.max_body_bytes}")
            chunks, size = [], 0
            t0 = time.monotonic()
            with anyio.move_on_after(lim.body_timeout_s) as scope:
                async for chunk in self.stream():
                    size += len(chunk)
                    if size > lim.max_body_bytes:
                        raise HTTPException(413, f"body exceeds {lim.max_body_bytes} bytes")
                    chunks.append(chunk)
            if scope.cancelled_caught:
                waited = time.monotonic() - t0
                raise HTTPException(408, f"body not received within {waited:.1f} s")
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            self._json = await anyio.to_thread.run_sync(parse_json, raw, self.limits.max_json_depth)
        return self._json


def bounded_route(limits: HostLimits) -> type[APIRoute]:
    """An APIRoute class whose requests are `BoundedRequest`s under `limits`."""

    class _Request(BoundedRequest):
        pass

    _Request.limits = limits

    class BoundedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def bounded(request: Request) -> Response:
                return await handler(_Request(request.scope, request.receive))

            return bounded

    return BoundedRoute


class Admission:
    """Counts pipeline calls in flight; past the limit, requests are shed (503) at once. Used
    only from the event loop, so plain integers suffice. `ready()` is the readiness signal:
    false while draining, at the limit, or within `hold_s` of the last shed request."""

    def __init__(self, limit: int, hold_s: float = 1.0) -> None:
        self.limit, self.hold_s = limit, hold_s
        self.inflight = 0
        self.draining = False
        self._last_shed = -1e18

    def try_enter(self) -> bool:
        if self.draining or self.inflight >= self.limit:
            self._last_shed = time.monotonic()
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        self.inflight -= 1

    def status(self) -> str:
        if self.draining:
            return "draining"
        if self.inflight >= self.limit or time.monotonic() - self._last_shed < self.hold_s:
            return "shedding"
        return "ok"
