"""The HTTP API's request and response bodies (pydantic): what the OpenAPI schema and `/docs`
publish, and what every request is validated against before it reaches the pipeline. Strict
types, unknown fields refused, so a client's typo is named instead of ignored."""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

__all__ = [
    "EngageRequest",
    "ErrorBody",
    "exact_integer_bounds",
    "FeedRequest",
    "FeedResponse",
    "FieldError",
    "Health",
    "ID_LIMIT",
    "Ok",
    "Slot",
    "upload_model",
    "UploadRequest",
]

U64_MAX = 2**64 - 1
# ids sent to the host are int64-safe (Java long, SQL bigint); 2**64-1 is the index's "no item"
ID_LIMIT = 2**63
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def exact_integer_bounds(node: Any) -> Any:
    """FastAPI's OpenAPI model stores numeric bounds as floats (2**63 becomes 9.22e18), which
    makes generators and clients round; publish the bounds of integer fields as integers."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for k in _BOUNDS:
                if isinstance(node.get(k), float) and node[k].is_integer():
                    node[k] = int(node[k])
        for v in node.values():
            exact_integer_bounds(v)
    elif isinstance(node, list):
        for v in node:
            exact_integer_bounds(v)
    return node


_STRICT = ConfigDict(strict=True, extra="forbid")

Id = Annotated[str, Field(min_length=1, max_length=256)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Float32 = Annotated[float, Field(allow_inf_nan=False, ge=-3.4e38, le=3.4e38)]


def _integral(v: object) -> object:
    # JSON Schema counts 7.0 as an integer; strict pydantic would not. A fraction stays refused.
    return int(v) if isinstance(v, float) and v.is_integer() else v


Int = Annotated[int, BeforeValidator(_integral)]


class FeedRequest(BaseModel):
    """A request for one user's feed (POST /feed)."""

    model_config = _STRICT
    user_id: Id = Field(description="the caller's user id (hashed before anything is logged)")
    request_id: Id = Field(description="unique per request; impression ids derive from it")
    n: Int = Field(20, ge=1, le=200, description="slots to return")


class EngageRequest(BaseModel):
    """What the user did with one served slot, by its impression id (POST /engage)."""

    model_config = _STRICT
    impression_id: Annotated[str, Field(min_length=1, max_length=512)]
    watched_seconds: Finite = Field(0.0, ge=0.0, le=86_400.0)
    completed: bool = False
    liked: bool = False
    shared: bool = False
    followed: bool = False


class UploadRequest(BaseModel):
    """A new or replaced item: its embedding and metadata (POST /upload)."""

    model_config = _STRICT
    item_id: Int = Field(ge=0, lt=ID_LIMIT, description="new or replaced item id")
    embedding: List[Float32] = Field(
        min_length=1, max_length=4096, description="the item embedding (the index dimension)"
    )
    topic: Int = Field(ge=0, lt=2**31)
    creator: Int = Field(ge=0, lt=ID_LIMIT)
    category: Int = Field(0, ge=0, lt=2**31)


def upload_model(dim: Optional[int]) -> type[UploadRequest]:
    """`UploadRequest` with the embedding length pinned to the index dimension, so the
    published schema says exactly what the host accepts."""
    if dim is None:
        return UploadRequest
    emb = (List[Float32], Field(min_length=dim, max_length=dim, description=f"{dim} numbers"))
    return create_model(  # type: ignore[call-overload,no-any-return]
        "UploadRequest", __base__=UploadRequest, embedding=emb
    )


class Slot(BaseModel):
    """One served slot of a feed, with the prediction and propensity frozen for the log."""

    item_id: int = Field(ge=0, le=U64_MAX)
    position: int = Field(ge=0)
    source: Literal["ranked", "exploration", "fresh"]
    propensity: float
    impression_id: str = Field(description="pass to /engage to report the outcome")
    topic: int
    creator: int
    value: float = Field(description="value score: task predictions weighted by product config")
    predictions: Dict[str, float] = Field(description="frozen per-task predictions")
    model_version: str


class FeedResponse(BaseModel):
    """The served feed: its slots in order and the request's identity."""

    request_id: str
    model_version: str
    slots: List[Slot]
    relaxed: Dict[str, int] = Field(description="policy rules relaxed to fill the feed")
    timings_ms: Dict[str, float] = Field(description="per-stage latency of this request")


class Ok(BaseModel):
    """An accepted write."""

    ok: bool = True


class Health(BaseModel):
    """Readiness: whether the host takes traffic, and its load."""

    status: Literal["ok", "shedding", "draining"] = Field(
        description="ok: ready for traffic; shedding: at --max-inflight (or shed within the "
        "last second); draining: shutting down"
    )
    items: int
    inflight: int
    max_inflight: int


class FieldError(BaseModel):
    """One rejected field and what to fix."""

    field: str = Field(description="dotted path of the offending field ('' for the body)")
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line saying what was wrong, and the field errors."""

    error: str = Field(description="what was wrong and what would be right")
    errors: List[FieldError] = Field(default_factory=list)
