"""What makes a generator's output no image at all: NaN/Inf values, or one value everywhere.

Shared by the sweep (each cell's runner output is checked once before it is timed) and the export
parity gate (a degenerate PyTorch reference fails the gate: a comparison with it says nothing).
"""

from __future__ import annotations

import numpy as np


def output_problem(y) -> str:
    """Why ``y`` (an array of a generator's output) is degenerate, in a short phrase; "" when it is not."""
    a = np.asarray(y)
    if a.size == 0:
        return "the output is empty"
    bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if bad:
        return f"{bad} of {a.size} output values are NaN/Inf"
    lo, hi = a.min(), a.max()
    if lo == hi:
        return f"the output is constant ({float(lo):g} everywhere)"
    return ""
