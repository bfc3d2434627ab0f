"""Shared FastAPI dependencies: the runtime, a per-request transaction, the caller, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Principal, Role, authenticate
from services.common.errors import Forbidden, Unauthorized
from services.common.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)


async def get_runtime(request: Request) -> Runtime:
    # A coroutine, though it awaits nothing: FastAPI runs a plain function dependency in
    # its thread pool, a thread's wake-up and the GIL handed over twice for every
    # request (seen in the API's profile, docs/benchmarks.md, twenty-seventh session).
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    # The request owns the transaction: it commits once the handler has returned cleanly.
    async with runtime.db.transaction() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_principal(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a bearer token is required")
    async with runtime.db.pool.acquire() as conn:
        principal = await authenticate(conn, credentials.credentials)
    if principal is None:
        raise Unauthorized("the token is unknown or revoked")
    return principal


def require(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    allowed = frozenset(roles)

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise Forbidden(f"this needs one of the roles: {names}")
        return principal

    return check


CurrentUser = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(require(Role.admin))]
Supplier = Annotated[Principal, Depends(require(Role.supplier))]
# Offender managers, their supervisors and admins: each sees the alerts their role reaches.
Caseload = Annotated[Principal, Depends(require(Role.manager, Role.supervisor, Role.admin))]
Investigator = Annotated[Principal, Depends(require(Role.investigator))]
Auditor = Annotated[Principal, Depends(require(Role.auditor))]
