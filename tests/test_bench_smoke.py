"""Each benchmark's smoke mode: a few tags for a day, so the harness keeps working. The
figures are printed, never asserted: speed is measured on demand (docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from bench import proximity, throughput


async def test_proximity_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert await proximity.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "loaded 28," in out  # 20 tags, a day, less signal loss
    assert "whole search (as the API runs it, audit included): n=20" in out
    # Each search is at a place and time where somebody was: they must be found.
    found = next(line for line in out.splitlines() if line.startswith("subjects found"))
    assert int(found.split(", min ")[1].split(",")[0]) >= 1, found


@pytest.mark.parametrize("bus", ["memory", "kafka"])
async def test_throughput_benchmark_runs(bus: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The whole pipeline as `tagtrail run`, or as the API and a worker per role on Kafka,
    # the simulator posting to it over HTTP.
    assert await throughput.main(["--smoke", "--bus", bus]) == 0
    out = capsys.readouterr().out
    assert "end to end: 200 fixes" in out and "stored 200" in out
    assert "raw COPY into trail_points" in out and "peak memory: tagtrail " in out
