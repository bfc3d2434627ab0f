"""Domain errors that carry their HTTP status, and the one handler that renders them."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError


class TagtrailError(Exception):
    status_code = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(TagtrailError):
    status_code = 400


class Unauthorized(TagtrailError):
    status_code = 401


class Forbidden(TagtrailError):
    status_code = 403


class NotFound(TagtrailError):
    status_code = 404


class Conflict(TagtrailError):
    status_code = 409


class PayloadTooLarge(TagtrailError):
    status_code = 413


class Unprocessable(TagtrailError):
    status_code = 422


class Unavailable(TagtrailError):
    status_code = 503


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TagtrailError)
    async def _domain(_: Request, exc: TagtrailError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        body: dict[str, Any] = {"error": exc.message}
        if exc.details:
            body["details"] = exc.details
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # Constraint names are ours and safe to show; the SQL and values are not.
        constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", None)
        return JSONResponse(
            {"error": "conflicts with existing data", "details": {"constraint": constraint}},
            status_code=409,
        )

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        return JSONResponse({"error": "database unavailable"}, status_code=503)

    # The same, where a route reads on asyncpg's pool, not through the ORM (ingest,
    # authentication): a connection lost or refused, or the database full, is a retry
    # later for the client, not a fault of its request.
    for lost in (
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        ConnectionError,
    ):
        app.add_exception_handler(lost, _database_lost)


async def _database_lost(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "database unavailable"}, status_code=503)
