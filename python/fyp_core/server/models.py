"""The HTTP API's request and response bodies (pydantic): what the OpenAPI schema and `/docs`
publish, and what every request is validated against before it reaches the pipeline. Strict
types, unknown fields refused, so a client's typo is named instead of ignored."""

from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

U64_MAX = 2**64 - 1
_STRICT = ConfigDict(strict=True, extra="forbid")

Id = Annotated[str, Field(min_length=1, max_length=256)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class FeedRequest(BaseModel):
    model_config = _STRICT
    user_id: Id = Field(description="the caller's user id (hashed before anything is logged)")
    request_id: Id = Field(description="unique per request; impression ids derive from it")
    n: int = Field(20, ge=1, le=200, description="slots to return")


class EngageRequest(BaseModel):
    model_config = _STRICT
    impression_id: Annotated[str, Field(min_length=1, max_length=512)]
    watched_seconds: Finite = Field(0.0, ge=0.0, le=86_400.0)
    completed: bool = False
    liked: bool = False
    shared: bool = False
    followed: bool = False


class UploadRequest(BaseModel):
    model_config = _STRICT
    item_id: int = Field(ge=0, lt=U64_MAX, description="new or replaced item; 2**64-1 is reserved")
    embedding: List[Finite] = Field(
        min_length=1, max_length=4096, description="the item embedding (the index dimension)"
    )
    topic: int = Field(ge=0, lt=2**31)
    creator: int = Field(ge=0, le=U64_MAX)
    category: int = Field(0, ge=0, lt=2**31)


def upload_model(dim: Optional[int]) -> type[UploadRequest]:
    """`UploadRequest` with the embedding length pinned to the index dimension, so the
    published schema says exactly what the host accepts."""
    if dim is None:
        return UploadRequest
    emb = (List[Finite], Field(min_length=dim, max_length=dim, description=f"{dim} numbers"))
    return create_model(  # type: ignore[call-overload,no-any-return]
        "UploadRequest", __base__=UploadRequest, embedding=emb
    )


class Slot(BaseModel):
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
    request_id: str
    model_version: str
    slots: List[Slot]
    relaxed: Dict[str, int] = Field(description="policy rules relaxed to fill the feed")
    timings_ms: Dict[str, float] = Field(description="per-stage latency of this request")


class Ok(BaseModel):
    ok: bool = True


class Health(BaseModel):
    status: Literal["ok", "shedding", "draining"] = Field(
        description="ok: ready for traffic; shedding: at --max-inflight (or shed within the "
        "last second); draining: shutting down"
    )
    items: int
    inflight: int
    max_inflight: int


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field ('' for the body)")
    message: str


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and what would be right")
    errors: List[FieldError] = Field(default_factory=list)
