"""Every error the host answers is JSON (`ErrorBody`): validation errors name the field and the
rule, routing errors (404/405) and limits (408/413/503) say what to change, and an unexpected
failure is a 500 with no internals leaked."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["field_errors", "install"]

_log = logging.getLogger("fyp_core.server")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def field_errors(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    """(status, body) for a validation error: 400 for a body that is not JSON, else 422."""
    errors, status = [], 422
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        field = ".".join(loc)
        kind = e.get("type", "")
        if kind == "json_invalid":
            status = 400
            msg = f"body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
            field = ""
        elif kind == "missing" and not field:
            msg = "body required: a JSON object"
        elif kind == "missing":
            msg = f"missing field {field!r}"
        elif kind == "extra_forbidden":
            msg = f"unknown field {field!r}"
        elif not field:
            msg = "body must be a JSON object sent with Content-Type: application/json"
        else:
            msg = f"field {field!r}: {e.get('msg')}, got {_short(e.get('input'))}"
        errors.append({"field": field, "message": msg})
    return status, {"error": "; ".join(x["message"] for x in errors), "errors": errors}


def install(app: FastAPI) -> None:
    """Register the host's error handlers on ``app``: validation errors, HTTP errors (404/405
    included) and anything unexpected all answer with the JSON error body (``ErrorBody``)."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, body = field_errors(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} not allowed on {request.url.path}"
        return JSONResponse({"error": str(detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)
