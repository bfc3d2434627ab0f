"""Checkouts measured side by side, each in a process of its own (bench/ingest_path.py,
bench/wire.py): their options, their order, and running one measurement."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson


def add_options(parser: argparse.ArgumentParser, measured: str) -> None:
    """--code (repeatable), --rounds and --smoke."""
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        help=f"a checkout whose {measured} is measured (repeat to compare; default this one)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements a checkout")
    parser.add_argument("--smoke", action="store_true", help="20 tags, 10 minutes")


def in_turn(codes: Sequence[Path] | None, default: Path, rounds: int) -> list[Path]:
    """The checkouts (this one if none) in the order they are measured: A B, then B A,
    and so on, so that the machine's drift falls on each alike."""
    given = [c.absolute() for c in codes or [default]]
    return [c for r in range(rounds) for c in (given if r % 2 == 0 else given[::-1])]


def measure(
    script: Path, code: Path, argv: Sequence[str], env: Mapping[str, str]
) -> dict[str, Any]:
    """Runs `script --child ...` with `code` first on the path; its figures, the JSON
    object on its last line."""
    out = subprocess.run(
        [sys.executable, str(script), "--child", *argv],
        env={**env, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"the measurement in {code} failed:\n{out.stderr[-4000:]}")
    figures: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return figures
