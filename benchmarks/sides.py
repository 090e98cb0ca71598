"""Timing the sides of a benchmark fairly on a shared machine.

A 2-core machine with one other busy process makes single timings swing several-fold (a
ratio of 0.94, 7.06 and 1.10 on three consecutive runs of the same comparison). So every
benchmark here measures its sides alternately (A B, then B A, ...) over ``--repeats`` rounds,
so that drift and bursts of load fall on both, and reports min / median / max of each side
and of the per-round ratio, with the torch thread count. Quote the median with its spread.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence

from tabulate import tabulate

DEFAULT_REPEATS = 5


def alternate(sides: dict[str, Callable[[], float]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Call each side once per round, the order reversed every other round; each call returns
    its measurement (a rate or a duration). One untimed warm-up round first when ``warmup``."""
    names = list(sides)
    if warmup:
        for name in names:
            sides[name]()
    values: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        for name in names if round_number % 2 == 0 else reversed(names):
            values[name].append(sides[name]())
    return values


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Min, median and max."""
    return min(values), statistics.median(values), max(values)


def table(
    values: dict[str, list[float]],
    unit: str,
    *,
    ratios: Sequence[tuple[str, str]] = (),
    threads: int,
    floatfmt: str = ".4g",
) -> str:
    """Min / median / max of each side and of each per-round ratio ``a / b``, and how it was measured."""
    rows = [[name, unit, *spread(series)] for name, series in values.items()]
    for a, b in ratios:
        per_round = [x / y for x, y in zip(values[a], values[b], strict=True)]
        rows.append([f"ratio {a} / {b}", "x", *spread(per_round)])
    rounds = len(next(iter(values.values())))
    body = tabulate(rows, headers=["", "unit", "min", "median", "max"], floatfmt=floatfmt)
    return f"{body}\n{rounds} alternating rounds, {threads} torch thread(s)"


def add_arguments(parser: argparse.ArgumentParser, repeats: int = DEFAULT_REPEATS) -> None:
    """``--repeats`` and ``--threads`` (default 1: timings on a shared machine are steadier)."""
    parser.add_argument("--repeats", type=int, default=repeats, help="alternating rounds (min/median/max over them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
