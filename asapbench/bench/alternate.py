"""Alternated A/B timing: several ways of computing the same thing, timed in turns in one process.

A comparison of two implementations timed one after the other (all runs of A, then all of B) divides
numbers taken under different machine conditions: a noisy neighbour, a clock change or a thermal drift
in between lands on one side only. :func:`alternate` times them in rounds instead: each round runs every
side in the order given (the baseline first), each with its own warm-up and timed runs
(:func:`asapbench.bench.timing.run_loop`), so every side sees every phase of the run. :func:`compare`
summarises a side against the baseline: the statistics of each side over all its timed runs
(:func:`~asapbench.bench.timing.summarize`), the ratio of their medians and of their minima, and the
per-round ratios (baseline round median / side round median), whose spread shows how much the
conditions moved the answer. ``scripts/compare_official.py`` uses it; docs/timing.md describes it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asapbench.bench.timing import Stats, cpu_timer, run_loop, summarize

#: one side of an alternated timing: (name, function that runs it once)
Side = tuple[str, Callable[[], object]]


def alternate(
    sides: Sequence[Side],
    rounds: int,
    *,
    warmup: int = 1,
    iters: int = 1,
    timer: Callable[[Callable[[], object]], float] = cpu_timer,
    on_run: Callable[[int, str, str, int], None] | None = None,
) -> dict[str, list[list[float]]]:
    """Time ``sides`` in ``rounds`` rounds, each side in the order given within every round: ``warmup``
    untimed runs, then ``iters`` timed runs (ms, by ``timer``). Returns name -> per-round lists of times.

    ``on_run(round, name, phase, i)`` is called after each run (progress display; round from 1).
    """
    if rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError("rounds and iters must be >= 1 and warmup >= 0")
    names = [name for name, _ in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must be unique: {names}")
    out: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(1, rounds + 1):
        for name, fn in sides:
            hook = None if on_run is None else (lambda phase, i, r=r, name=name: on_run(r, name, phase, i))
            loop = run_loop(fn, timer, warmup=warmup, warmup_seconds=0.0, iters=iters, min_seconds=0.0, on_run=hook)
            out[name].append(list(loop.samples_ms))
    return out


@dataclass(frozen=True)
class Comparison:
    """A side against the baseline over alternated rounds (times in ms; a ratio > 1: the side is faster)."""

    baseline: Stats  # over every timed run of the baseline
    other: Stats  # over every timed run of the side
    ratio_median: float  # baseline median / side median
    ratio_min: float  # baseline min / side min
    round_ratios: tuple[float, ...]  # per round: baseline round median / side round median
    rounds: int

    @property
    def round_ratio_min(self) -> float:
        return min(self.round_ratios)

    @property
    def round_ratio_max(self) -> float:
        return max(self.round_ratios)

    def as_dict(self) -> dict:
        return {
            "baseline": self.baseline.as_dict(), "other": self.other.as_dict(), "ratio_median": self.ratio_median,
            "ratio_min": self.ratio_min, "round_ratios": list(self.round_ratios),
            "round_ratio_min": self.round_ratio_min, "round_ratio_max": self.round_ratio_max, "rounds": self.rounds,
        }


def compare(baseline: Sequence[Sequence[float]], other: Sequence[Sequence[float]]) -> Comparison:
    """The side ``other`` against ``baseline``, both per-round lists of times (ms) from :func:`alternate`."""
    if len(baseline) != len(other) or not baseline:
        raise ValueError(f"both sides need the same number (>= 1) of rounds: {len(baseline)} vs {len(other)}")
    if any(not r for r in (*baseline, *other)):
        raise ValueError("every round needs at least one time")
    b = summarize([t for r in baseline for t in r])
    o = summarize([t for r in other for t in r])
    per_round = tuple(statistics.median(rb) / statistics.median(ro) for rb, ro in zip(baseline, other))
    return Comparison(b, o, b.median / o.median, b.min / o.min, per_round, len(baseline))
