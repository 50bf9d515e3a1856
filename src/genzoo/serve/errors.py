"""Errors as OpenAI's API reports them: ``{"error": {"message", "type", "param", "code"}}`` with the usual status
codes, so clients written for that API handle ours. No stack trace ever reaches a client: unexpected errors are
logged on the server and answered with a generic 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from genzoo.errors import GenzooError
from genzoo.serve.registry import UnknownModelError

log = logging.getLogger("genzoo.serve")


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _respond(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in OpenAI's format with the right status code."""

    @app.exception_handler(APIError)
    async def _api(_: Request, err: APIError) -> JSONResponse:
        return _respond(err.status, err.message, err.kind, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [(".".join(str(p) for p in e.get("loc", ()) if p != "body"), e.get("msg", "invalid"))
                    for e in err.errors()]
        message = "; ".join(f"{where or 'body'}: {what}" for where, what in problems) or "invalid request"
        return _respond(400, message, "invalid_request_error", problems[0][0] or None if problems else None)

    @app.exception_handler(UnknownModelError)
    async def _unknown(_: Request, err: UnknownModelError) -> JSONResponse:
        return _respond(404, str(err), "invalid_request_error", "model", "model_not_found")

    @app.exception_handler(GenzooError)
    async def _genzoo(_: Request, err: GenzooError) -> JSONResponse:
        return _respond(400, str(err), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return _respond(err.status_code, str(err.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _respond(500, "the server failed to answer this request; the error is in its log", "server_error")
