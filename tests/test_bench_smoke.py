"""Each benchmark's smoke mode: a few tags for a day, so the harness keeps working. The
figures are printed, never asserted: speed is measured on demand (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from starlette.types import Receive, Scope, Send

from bench import copy_batches, ingest_path, proximity, simulate, throughput, trail_indexes, wire
from bench.fleet import Fleet, FleetSpec
from services.common.auth import Role
from services.common.database import Database
from services.common.settings import Settings
from services.ingest.repository import PARTITIONED, partition_name
from services.pipeline import Pipeline
from tests.conftest import serve, serve_app, token_for


async def test_proximity_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert await proximity.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "loaded 28," in out  # 20 tags, a day, less signal loss
    assert "whole search (as the API runs it, audit included): n=20" in out
    # Each search is at a place and time where somebody was: they must be found.
    found = next(line for line in out.splitlines() if line.startswith("subjects found"))
    assert int(found.split(", min ")[1].split(",")[0]) >= 1, found


async def test_trail_indexes_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert await trail_indexes.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    medians = out.split("medians:")[1].splitlines()[1:]
    assert len(medians) == len(trail_indexes.VARIANTS)
    for line in medians:  # every variant took its fixes in
        assert float(line.split("µs a fix, ")[1].split(" fixes/s")[0].replace(",", "")) > 0
    # Each index is put back as it was: the table ends as the migrations made it.
    assert "as migrated (both indexes)" in out


@pytest.mark.parametrize("collate_c", [False, True])
async def test_copy_batches_benchmark_runs(
    collate_c: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await copy_batches.main(["--smoke"] + (["--collate-c"] if collate_c else [])) == 0
    out = capsys.readouterr().out
    assert f"tag_id collation: {'C' if collate_c else 'the database default'}" in out
    medians = out.split("medians:")[1].splitlines()[1:]
    assert len(medians) == 3
    for line in medians:  # every variant took its fixes in
        assert float(line.split("µs a fix, ")[1].split(" fixes/s")[0].replace(",", "")) > 0


def test_wire_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    # This checkout twice, as two checkouts are compared: each in a process of its own.
    here = str(wire.ROOT)
    assert wire.main(["--smoke", "--code", here, "--code", here]) == 0
    out = capsys.readouterr().out
    runs = [x for x in out.splitlines() if x.startswith("[")]
    assert len(runs) == 2, out
    for line in runs:  # every fix encoded and decoded to the same, at some CPU a fix
        assert "DIFFER" not in line, line
        assert int(line.split("] ")[1].split(" fixes")[0].replace(",", "")) > 100, line
        assert float(line.split("encode ")[1].split(" µs")[0]) > 0, line
    assert f"{here}: encode " in out.split("medians")[1]


@pytest.mark.parametrize("bus", ["memory", "kafka"])
async def test_ingest_path_benchmark_runs(bus: str, capsys: pytest.CaptureFixture[str]) -> None:
    # This checkout twice, as two checkouts are compared: each in a process of its own.
    here = str(ingest_path.ROOT)
    assert await ingest_path.main(["--smoke", "--bus", bus, "--code", here, "--code", here]) == 0
    out = capsys.readouterr().out
    runs = [x for x in out.splitlines() if x.startswith("[")]
    assert len(runs) == 2, out
    for line in runs:  # every measured fix accepted, at some CPU a fix
        fixes, accepted = re.search(r"\] ([\d,]+) fixes \(([\d,]+) accepted\)", line).groups()  # type: ignore[union-attr]
        assert int(fixes.replace(",", "")) > 100 and accepted == fixes, line
        assert float(line.split("): ")[1].split(" µs")[0]) > 0, line
    assert f"{here}: " in out.split("medians:")[1]


async def _bench_topics() -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=Settings().kafka.bootstrap)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith("bench")}
    finally:
        await admin.close()


@pytest.mark.parametrize("bus", ["memory", "kafka"])
async def test_throughput_benchmark_runs(bus: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The whole pipeline as `tagtrail run`, or as the API and a worker per role on Kafka,
    # the simulator posting to it over HTTP.
    before = await _bench_topics()
    assert await throughput.main(["--smoke", "--bus", bus]) == 0
    # A run takes its topics away with it (none new is left; another run on the same
    # broker may take its own away meanwhile).
    assert await _bench_topics() <= before
    out = capsys.readouterr().out
    # 20 tags for 10 minutes, less signal loss (which slice of the day depends on the
    # clock): every fix accepted is stored.
    line = next(x for x in out.splitlines() if x.startswith("end to end: "))
    accepted = int(re.search(r"accepted ([\d,]+)", line)[1].replace(",", ""))  # type: ignore[index]
    assert 150 <= accepted <= 200 and f"stored {accepted:,}" in line, line
    assert "raw COPY into trail_points" in out and "peak memory: tagtrail " in out
    # What 0.5 of the ceiling would leave for each fix, against what the stretch spent.
    after = out.split("raw COPY into trail_points just")[1].splitlines()[1]
    assert after.startswith("at 0.5 of that ceiling (") and " this stretch spent " in after, after
    # The stretch's own statements (the local cluster loads pg_stat_statements), the
    # store's COPY among them.
    costliest = out.split("PostgreSQL's costliest statements meanwhile")[1].split("\ncrime")[0]
    assert 'COPY "trail_points"' in costliest, costliest
    # PostgreSQL's CPU by what its processes do: the connections did the stretch's work.
    roles = next(x for x in out.splitlines() if x.startswith("PostgreSQL's by role"))
    assert float(roles.split("connections ")[1].split(",")[0].split(";")[0]) > 0, roles
    assert "WAL a fix: " in roles, roles
    # And its connections' by the process they serve (their application_name).
    clients = next(x for x in out.splitlines() if x.startswith("PostgreSQL's connections by"))
    assert ("tagtrail run " if bus == "memory" else "tagtrail worker store ") in clients, clients


def test_the_throughput_benchmark_prints_what_the_target_ratio_leaves_a_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 0.5 of a 250,000-a-second ceiling is 125,000 fixes a second: two cores wholly
    # busy give each fix 16 µs, and 14.4 kept 90 % busy.
    monkeypatch.setattr(throughput.os, "cpu_count", lambda: 2)
    stretch = throughput.Stretch(
        fixes=1000,
        rate=60_000,
        server_us=9,
        postgres_us=8,
        total_us=21.5,
        busy=0.9,
        ok=True,
        peaks={},
    )
    assert throughput.budget(stretch, 250_000) == (
        "at 0.5 of that ceiling (125,000 fixes/s) the 2 cores allow 14.4 µs of CPU a fix"
        " in all, kept 90% busy as here (16.0 wholly busy); this stretch spent 21.5"
    )


async def test_the_throughput_benchmark_measures_checkouts_in_turn(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Two "checkouts": this one, and a copy of its code elsewhere, served through
    # PYTHONPATH and with no .local of its own (it is told where the services run),
    # each measured twice in alternating order against one database.
    other = tmp_path / "other"
    for part in ("services", "migrations"):  # `tagtrail run` migrates as it starts
        shutil.copytree(throughput.ROOT / part, other / part)
    shutil.copy(throughput.ROOT / "alembic.ini", other)
    argv = ["--smoke", "--code", str(throughput.ROOT), "--code", str(other), "--rounds", "2"]
    assert await throughput.main(argv) == 0
    out = capsys.readouterr().out
    stretches = [x for x in out.splitlines() if x.startswith("end to end: ")]
    order = [re.search(r"\[stretch (\d) of 4: (.*)\]$", x).groups() for x in stretches]  # type: ignore[union-attr]
    root, alias = str(throughput.ROOT), str(other)
    assert order == [("1", root), ("2", alias), ("3", alias), ("4", root)], order
    for line in stretches:
        accepted = int(re.search(r"accepted ([\d,]+)", line)[1].replace(",", ""))  # type: ignore[index]
        assert accepted > 100 and f"stored {accepted:,}" in line, line
    assert (
        sum(x.startswith((f"{root}: fixes/s", f"{alias}: fixes/s")) for x in out.splitlines()) == 2
    )


async def test_the_throughput_benchmark_serves_stretches_without_the_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A stretch served by the API and the store alone, for the ratio of ingest and
    # storage on their own; the run's last, so the checks go through its fixes after it,
    # unmeasured, before the run's own checks. The database and topics are kept, to see.
    before = await _bench_topics()
    assert await throughput.main(["--smoke", "--bus", "kafka", "--without-checks", "--keep"]) == 0
    out = capsys.readouterr().out
    name = re.search(r"database kept: (\S+)", out)[1]  # type: ignore[index]
    logs = re.search(r"servers' logs kept: (\S+)", out)[1]  # type: ignore[index]
    prefix = {t.split(".")[0] + "." for t in await _bench_topics() - before}.pop()
    settings = Settings()
    try:
        stretches = [x for x in out.splitlines() if x.startswith("end to end: ")]
        assert [x.rsplit(", ", 1)[1] for x in stretches] == ["with checks]", "without checks]"]
        cpu = [x for x in out.splitlines() if x.startswith("CPU while fixes flowed")]
        assert "worker zones" in cpu[0] and "worker store" in cpu[1], cpu
        assert "worker zones" not in cpu[1] and "worker crimes" not in cpu[1], cpu
        assert "the checks through the stretch without them: " in out.split(stretches[1])[1]
        # Every fix went through the zone checker's group and the box keeper.
        assert await throughput.kafka_caught_up(settings.kafka.bootstrap, prefix)
        db = await Database.connect(settings.db, name, name="test")
        try:
            async with db.pool.acquire() as conn:
                assert await conn.fetchval("select count(*) from trail_unboxed") == 0
                # The raw COPYs around each stretch left nothing behind: their day's
                # partitions are gone, and with them their rows.
                day = datetime.now(UTC).date() - throughput.CEILING_AGE
                for d in (day - timedelta(days=1), day):
                    for table in PARTITIONED:
                        assert (
                            await conn.fetchval("select to_regclass($1)", partition_name(d, table))
                            is None
                        )
        finally:
            await db.close()
        # Each stretch's ratio, against the raw COPY just before and after it.
        around = [x for x in out.splitlines() if x.startswith("raw COPY into trail_points just")]
        assert len(around) == 2 and all("; ratio 0." in x for x in around), around
        assert "peak memory: tagtrail api " in out
    finally:
        await throughput.drop_database(settings, name)
        await throughput.drop_topics(settings.kafka.bootstrap, prefix)
        shutil.rmtree(logs)  # kept with the rest


async def test_the_simulator_enrols_a_fleet_and_posts_it(
    memory_pipeline: Pipeline, db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    _, admin = await token_for(db, Role.admin, "simulator-admin")
    token = admin["Authorization"].removeprefix("Bearer ")
    async with serve(memory_pipeline) as url:
        args = ["--url", url, "--enrol-token", token, "--tags", "5", "--minutes", "30"]
        assert await simulate.main(args) == 0
    out = capsys.readouterr().out
    assert "enrolled 5 tags" in out and "rejected 0, failed requests 0" in out
    async with db.pool.acquire() as conn:
        stored = await conn.fetchval("select count(*) from trail_points")
    # 5 tags reporting each minute for 30 minutes, less signal loss (up to an hour a tag).
    assert 90 <= stored <= 150, stored


async def test_the_simulator_fails_on_an_answer_it_cannot_read_rather_than_wait() -> None:
    async def accepts_unreadably(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"accepted, more or less"})

    # More requests than the queue and the workers hold at once: were a failed worker to
    # leave the rest waiting, the posting would wait for ever.
    bodies = iter([[b'{"tag_id": "T1"}']] * 40)
    async with serve_app(accepts_unreadably) as url, asyncio.timeout(30):
        with pytest.raises(ExceptionGroup) as failed:
            await simulate.post(url, "token", bodies, concurrency=2)
    assert failed.group_contains(ValueError)  # the JSON decoder's error


def test_the_simulator_holds_each_line_at_its_own_size() -> None:
    # orjson hands back a 4 KiB buffer for the shortest line; the throughput benchmark
    # holds a whole day's lines at once (docs/benchmarks.md, twenty-fourth session).
    fleet = Fleet(FleetSpec(tags=50, seed=2))
    start = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made = list(simulate.batches(fleet, start, 60, batch_fixes=500))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    lines = [line for batch in made for line in batch]
    assert len(lines) > 2500
    assert held < 2 * sum(map(len, lines)), (held, sum(map(len, lines)))


def test_the_simulator_holds_back_offline_tags_and_sends_them_late_out_of_order() -> None:
    fleet = Fleet(FleetSpec(tags=50, seed=2))
    start = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    lines = [
        orjson.loads(line)
        for batch in simulate.batches(fleet, start, 60, batch_fixes=500, offline_share=0.2)
        for line in batch
    ]
    times = [datetime.fromisoformat(line["ts"]) for line in lines]
    assert len(lines) > 50 * 60 * 0.95  # every fix is sent, once
    assert len({(line["tag_id"], line["ts"]) for line in lines}) == len(lines)
    # Some fixes go after ones taken ten minutes later than them: late and out of order.
    latest = list(itertools.accumulate(times, max))
    assert (
        sum(1 for t, seen in zip(times, latest, strict=True) if seen - t > timedelta(minutes=10))
        > 100
    )
