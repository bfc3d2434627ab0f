"""The tagtrail command: run everything, run one role, migrate, or issue a token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from services.common import collector
from services.common.auth import Role as UserRole
from services.common.database import Database
from services.common.settings import get_settings
from services.pipeline import ALL_ROLES, Pipeline, Role

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("tagtrail")


def migrate(url: str | None = None) -> None:
    """Brings the database to the newest schema (Alembic upgrade head)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def alembic_config(url: str | None = None) -> Config:
    """The project's Alembic configuration, for the database at url (by default the
    one the settings name)."""
    from alembic.config import Config

    config = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    if url is not None:
        # The ini file's interpolation reads % (escaped characters in the URL) as its own.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM once its own shutdown is done, which would kill the
    process before the pipeline drains; the CLI handles the signals instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(pipeline: Pipeline, host: str, port: int, demo: bool) -> None:
    from services.app import create_app

    # Signals are ours before anything starts: a SIGTERM while starting is a clean stop.
    stop = asyncio.Event()
    servers: list[uvicorn.Server] = []

    def shut_down() -> None:
        stop.set()
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shut_down)
    await pipeline.start()
    collector.freeze()
    collecting = collector.Collector()
    collecting.start()
    app = create_app(pipeline, manage=False)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    servers.append(server)
    server.should_exit = stop.is_set()
    tasks = [asyncio.create_task(server.serve(), name="http")]
    if demo:
        from services.demo import run_demo

        async def demo_after_start() -> None:
            # uvicorn offers a flag, not an event, for "listening".
            while not server.started:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await run_demo(f"http://{host}:{port}", pipeline.runtime.db, stop)

        tasks.append(asyncio.create_task(demo_after_start(), name="demo"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.set()
        server.should_exit = True
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 10)
        await collecting.stop()
        await pipeline.stop()


async def _work(pipeline: Pipeline) -> None:
    # Signals are ours before anything starts: a SIGTERM while starting is a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await pipeline.start()
    collector.freeze()
    collecting = collector.Collector()
    collecting.start()
    try:
        await stop.wait()
    finally:
        await collecting.stop()
        await pipeline.stop()


async def _token(role: UserRole, name: str) -> None:
    from services.registry import service as registry

    settings = get_settings()
    db = await Database.connect(settings.db, name="tagtrail token")
    try:
        async with db.transaction() as session:
            user, token = await registry.create_user_token(session, role, name)
    finally:
        await db.close()
    print(f"user_id: {user.id}\nrole:    {role.value}\ntoken:   {token}")
    print(
        "Keep the token safe: only its hash is stored, it cannot be shown again.", file=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tagtrail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="API and every worker in one process (in-process bus)")
    run.add_argument("--demo", action="store_true", help="enrol and simulate a demo fleet")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--bus", choices=["memory", "kafka"], default="memory")

    api = sub.add_parser("api", help="the HTTP API alone, on Kafka")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)

    worker = sub.add_parser("worker", help="one worker role, on Kafka")
    worker.add_argument("role", choices=[r.value for r in Role])

    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("schemas", help="write the JSON Schemas of wire messages into schemas/")

    token = sub.add_parser("token", help="issue an API token for a person")
    token.add_argument(
        "--role", required=True, choices=[r.value for r in UserRole if r is not UserRole.supplier]
    )
    token.add_argument("--name", required=True)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("alembic.runtime.plugins", "httpx", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = get_settings()

    if args.command == "migrate":
        migrate()
    elif args.command == "schemas":
        from services.wire import write_schemas

        for path in write_schemas():
            print(path)
    elif args.command == "token":
        asyncio.run(_token(UserRole(args.role), args.name))
    elif args.command == "run":
        collector.tune()
        migrate()
        pipeline = Pipeline(settings, bus=args.bus, roles=ALL_ROLES, name="tagtrail run")
        host, port = args.host or settings.app.host, args.port or settings.app.port
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(pipeline, host, port, args.demo))
    elif args.command == "api":
        collector.tune()
        pipeline = Pipeline(settings, bus="kafka", name="tagtrail api")
        host, port = args.host or settings.app.host, args.port or settings.app.port
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(pipeline, host, port, demo=False))
    elif args.command == "worker":
        collector.tune()
        pipeline = Pipeline(
            settings, bus="kafka", roles=[Role(args.role)], name=f"tagtrail worker {args.role}"
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_work(pipeline))


if __name__ == "__main__":
    main()
