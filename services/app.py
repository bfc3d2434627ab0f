"""The HTTP application: every service's routes, health, readiness and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.alerts.api import router as alerts_router
from services.common.deps import Admin, RuntimeDep
from services.common.errors import install_error_handlers
from services.common.limits import BodyLimit
from services.ingest.api import router as ingest_router
from services.pipeline import Pipeline
from services.registry.api import router as registry_router
from services.trails.api import router as trails_router
from services.zones.api import router as zones_router

# Every service's routes.
ROUTERS = (ingest_router, registry_router, zones_router, alerts_router, trails_router)


def create_app(pipeline: Pipeline, *, manage: bool = True) -> FastAPI:
    """An app over a pipeline; with manage=False the caller starts and stops it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            await pipeline.start()
        app.state.runtime = pipeline.runtime
        try:
            yield
        finally:
            if manage:
                await pipeline.stop()

    app = FastAPI(
        title="tagtrail",
        version="0.1.0",
        lifespan=lifespan,
    )
    if not manage:
        app.state.runtime = pipeline.runtime
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        default_bytes=pipeline.settings.app.max_body_bytes,
        own_limit_paths=("/v1/fixes", "/v1/device-events", "/v1/crimes/batches"),
    )
    for router in ROUTERS:
        app.include_router(router)

    # Health and readiness are open, as orchestrators probe them without credentials;
    # they say only whether the process and its dependencies answer.
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        checks = {"database": await runtime.db.ping(), "bus": await runtime.bus.ping()}
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["ops"])
    async def metrics(_: Admin) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
