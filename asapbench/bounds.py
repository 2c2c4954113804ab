"""Allowed ranges of the numeric command-line options, in one table, and the one check that enforces them.

Every command (run, export, profile, train, info, engines) passes its numeric options through
:func:`check`: a value outside its range, NaN or infinite is a :class:`UserError` naming the option
and the range (one line, exit code 2) before any work starts. The ranges keep the values where the
tools below behave: a thread count libgomp can start, a seed numpy and torch both accept, sizes whose
tensors' byte counts fit in 63 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asapbench.errors import UserError


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    lo_open: bool = False  # the lowest value itself is not allowed (e.g. a workspace of 0 GiB)
    integer: bool = True

    def text(self) -> str:
        fmt = (lambda v: f"{int(v):d}") if self.integer else (lambda v: f"{v:g}")
        return f"{'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}]"


#: the largest height or width of a resolution, in pixels: 65536x65536 still counts (meta tensors, no
#: allocation); 2**31 overflows the byte count of a tensor ("Storage size calculation overflowed")
MAX_SIDE = 65536
_COUNT = 1_000_000  # runs of a loop
_STEPS = 1_000_000_000
_DAY = 86_400.0

#: option -> allowed range (inclusive unless ``lo_open``); one entry per option name, whichever command has it
RANGES: dict[str, Range] = {
    # every command
    "--seed": Range(0, 2**32 - 1),  # numpy's seed range (train); torch takes it too
    "--batch": Range(1, 4096),
    "--threads": Range(1, 1024),  # 100000: libgomp cannot allocate its thread pool
    # run / profile loops
    "--warmup": Range(0, _COUNT),
    "--iters": Range(1, _COUNT),
    "--e2e-iters": Range(0, _COUNT),
    "--warmup-seconds": Range(0.0, _DAY, integer=False),
    "--min-seconds": Range(0.0, _DAY, integer=False),
    "--budget": Range(0.0, 7 * _DAY, integer=False),  # 0: no budget
    "--gemm-size": Range(16, 16384),
    # compare
    "--fail-on-regression": Range(0.0, 1000.0, integer=False),  # percent
    # export / engines
    "--workspace-gb": Range(0.0, 1024.0, lo_open=True, integer=False),
    "--opset": Range(17, 28),  # the upper end is lowered to what the installed onnx defines
    # train
    "--epochs": Range(1, _COUNT),
    "--steps": Range(1, _STEPS),
    "--stop-after": Range(1, _STEPS),
    "--batch-size": Range(1, 4096),
    "--save-every": Range(1, _STEPS),
    "--sample-every": Range(1, _STEPS),
    "--label-nc": Range(1, 1024),
    "--n-scales-d": Range(1, 8),
    "--lambda-feat": Range(0.0, 1e6, integer=False),
    "--lambda-vgg": Range(0.0, 1e6, integer=False),
    "--lambda-l1": Range(0.0, 1e6, integer=False),
    # 0 freezes a network (a control run); a rate that makes training diverge is not refused here: training
    # stops at the first non-finite loss (train.TrainingDiverged, exit 1) and keeps the last finite checkpoint
    "--lr-g": Range(0.0, 1e12, integer=False),
    "--lr-d": Range(0.0, 1e12, integer=False),
    "--decay-fraction": Range(0.0, 1.0, integer=False),
    "--ndf": Range(1, 1024),
    "--synthetic-size": Range(1, _COUNT),
    "--workers": Range(0, 256),
}


def check(option: str, value, hi: float | None = None):
    """``value`` of ``option`` when it lies in :data:`RANGES`; None passes (left out). UserError otherwise.

    ``hi``: a lower upper end than the table's (what this installation supports).
    """
    if value is None:
        return None
    r = RANGES[option]
    if hi is not None:
        r = Range(r.lo, min(r.hi, hi), r.lo_open, r.integer)
    if isinstance(value, int) and not isinstance(value, bool):  # exact, however large
        ok = (r.lo < value if r.lo_open else r.lo <= value) and value <= r.hi
    else:
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            v = math.nan
        ok = (math.isfinite(v) and (not r.integer or v.is_integer())
              and (r.lo < v if r.lo_open else r.lo <= v) and v <= r.hi)
    if not ok:
        kind = "an integer" if r.integer else "a number"
        raise UserError(f"{option} {value} is out of range; pass {kind} in {r.text()}")
    return value


def check_all(**options) -> None:
    """:func:`check` each keyword (``e2e_iters`` -> ``--e2e-iters``)."""
    for name, value in options.items():
        check("--" + name.replace("_", "-"), value)
