"""``asapbench compare A B``: two result sets side by side, cell by cell, with their noise.

A *cell* is one model x resolution x backend x precision x device (x input, batch, CUDA graph, preset,
overrides, checkpoint): the same key the reports use, less the machine, so that two machines can be compared.
For every cell that both sides timed, the ratio ``B / A`` of the median ms per image is set beside the
noise of the two measurements. The noise of a ratio of two medians is estimated from each side's
coefficient of variation (CoV, the per-run spread): ``noise = sqrt(CoV_A^2 + CoV_B^2)``, and a change
*exceeds the noise* when ``|ln(B / A)| > 2 * noise`` (about two standard deviations of the ratio's
logarithm). A cell without a CoV (one timed run) never exceeds the noise.

``--fail-on-regression PCT`` turns the comparison into a CI gate: exit code 1 when any cell got slower
by more than PCT percent *and* beyond its noise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asapbench.errors import UserError
from asapbench.report import CELL_KEY_ANY_MACHINE

#: the timing column compared, per --metric
METRICS = {"device": ("ms_median", "cov"), "e2e": ("e2e_ms_median", None)}
#: a change counts when it exceeds this many standard deviations of the ratio's logarithm
NOISE_SIGMAS = 2.0


@dataclass
class CellComparison:
    """One cell of the comparison: both sides' medians (ms per image), CoVs and statuses, and the verdict."""

    label: str
    a_ms: float | None
    b_ms: float | None
    a_cov: float | None
    b_cov: float | None
    a_status: str
    b_status: str

    @property
    def timed(self) -> bool:
        return self.a_ms is not None and self.b_ms is not None and self.a_ms > 0 and self.b_ms > 0

    @property
    def ratio(self) -> float | None:
        """B / A of the medians: above 1 means B is slower."""
        return self.b_ms / self.a_ms if self.timed else None

    @property
    def noise(self) -> float | None:
        """The relative spread of the ratio estimated from both CoVs (None when either side has none)."""
        if self.a_cov is None or self.b_cov is None:
            return None
        return math.sqrt(self.a_cov ** 2 + self.b_cov ** 2)

    @property
    def beyond_noise(self) -> bool:
        if not self.timed or self.noise is None:
            return False
        return abs(math.log(self.ratio)) > NOISE_SIGMAS * self.noise

    @property
    def verdict(self) -> str:
        if not self.timed:
            return f"not timed ({self.a_status or '-'} / {self.b_status or '-'})"
        if not self.beyond_noise:
            return "within noise" if self.noise is not None else "no CoV (one run)"
        return "slower" if self.ratio > 1 else "faster"

    def regressed(self, pct: float) -> bool:
        """Slower by more than ``pct`` percent and beyond the noise."""
        return self.timed and self.beyond_noise and self.ratio > 1 + pct / 100.0


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    cells: list[CellComparison]
    only_a: list[str]
    only_b: list[str]
    machines_a: list[str]
    machines_b: list[str]

    def regressions(self, pct: float) -> list[CellComparison]:
        return [c for c in self.cells if c.regressed(pct)]


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _cells(rows: Sequence[Any]) -> dict[tuple, Any]:
    """The last row of each cell (a result set that merged reruns: the later one counts, as in the reports)."""
    out: dict[tuple, Any] = {}
    for r in rows:
        key = tuple(getattr(r, k) for k in CELL_KEY_ANY_MACHINE)
        out.pop(key, None)
        out[key] = r
    return out


def _side(r: Any, metric: str) -> tuple[float | None, float | None, str]:
    ms_col, cov_col = METRICS[metric]
    ms = _finite(getattr(r, ms_col))
    ms = None if ms is None or r.status != "ok" else ms / max(1, r.batch)
    cov = _finite(getattr(r, cov_col)) if cov_col else None
    return ms, cov, r.status


def compare_rows(rows_a: Sequence[Any], rows_b: Sequence[Any], a: str = "A", b: str = "B",
                 metric: str = "device") -> Comparison:
    """Compare two lists of :class:`asapbench.report.BenchRow` cell by cell (see the module docstring)."""
    from asapbench.report import cell_label

    if metric not in METRICS:
        raise UserError(f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS)}")
    ca, cb = _cells(rows_a), _cells(rows_b)
    cells = []
    for key in [k for k in ca if k in cb]:
        (a_ms, a_cov, a_st), (b_ms, b_cov, b_st) = _side(ca[key], metric), _side(cb[key], metric)
        cells.append(CellComparison(cell_label(cb[key], machine=False), a_ms, b_ms, a_cov, b_cov, a_st, b_st))

    def label(k: tuple) -> str:
        return cell_label((ca.get(k) or cb[k]), machine=False)

    def machines(rows: Sequence[Any]) -> list[str]:
        return sorted({r.machine for r in rows})

    return Comparison(a, b, metric, cells, [label(k) for k in ca if k not in cb], [label(k) for k in cb if k not in ca],
                      machines(rows_a), machines(rows_b))


def compare_paths(a: str | os.PathLike, b: str | os.PathLike, metric: str = "device") -> Comparison:
    """Compare two result sets: each a bench.csv or a folder written by ``asapbench run``/``report``."""
    from asapbench.report import read_csv, resolve_bench_csv

    pa, pb = resolve_bench_csv(a), resolve_bench_csv(b)
    return compare_rows(read_csv(pa), read_csv(pb), str(a), str(b), metric)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def table_rows(cmp: Comparison) -> list[dict[str, str]]:
    """The comparison as rows of text (the markdown/CSV/console table)."""
    out = []
    for c in cmp.cells:
        out.append({
            "cell": c.label,
            "A ms": "" if c.a_ms is None else f"{c.a_ms:.4g}",
            "B ms": "" if c.b_ms is None else f"{c.b_ms:.4g}",
            "B/A": "" if c.ratio is None else f"{c.ratio:.3f}",
            "CoV A %": _pct(c.a_cov),
            "CoV B %": _pct(c.b_cov),
            "noise %": "" if c.noise is None else f"{100 * NOISE_SIGMAS * c.noise:.1f}",
            "verdict": c.verdict,
        })
    return out


def markdown(cmp: Comparison, pct: float | None = None) -> str:
    """The comparison as a markdown document (escaped cells)."""
    from asapbench.report import md_cell as _md

    what = "median ms per image, input on the device" if cmp.metric == "device" else "median end-to-end ms per image"
    lines = [f"# asapbench compare: {_md(cmp.b)} vs {_md(cmp.a)}", "",
             f"- A: `{_md(cmp.a)}` ({_md(', '.join(cmp.machines_a))})",
             f"- B: `{_md(cmp.b)}` ({_md(', '.join(cmp.machines_b))})",
             f"- metric: {what}; B/A above 1 means B is slower; noise = {NOISE_SIGMAS:g} x sqrt(CoV_A^2 + CoV_B^2)",
             ""]
    rows = table_rows(cmp)
    if rows:
        cols = list(rows[0])
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(_md(r[c]) for c in cols) + " |" for r in rows]
    else:
        lines.append("(no cell is in both result sets)")
    for name, only in (("A", cmp.only_a), ("B", cmp.only_b)):
        if only:
            lines += ["", f"Only in {name}: " + "; ".join(_md(x) for x in only)]
    if pct is not None:
        reg = cmp.regressions(pct)
        lines += ["", f"Regressions beyond the noise and {pct:g}%: {len(reg)}"
                  + (" (" + "; ".join(_md(c.label) for c in reg) + ")" if reg else "")]
    return "\n".join(lines) + "\n"


def csv_text(cmp: Comparison) -> str:
    import csv
    import io

    from asapbench.report import csv_cell

    buf = io.StringIO()
    rows = table_rows(cmp)
    cols = list(rows[0]) if rows else ["cell", "A ms", "B ms", "B/A", "CoV A %", "CoV B %", "noise %", "verdict"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([csv_cell(r[c]) for c in cols])
    return buf.getvalue()


def write(cmp: Comparison, out_dir: str | os.PathLike, pct: float | None = None) -> list[Path]:
    """Write compare.md and compare.csv into ``out_dir`` (each atomically)."""
    from asapbench.fsutil import atomic_write_text, ensure_writable_dir

    out = ensure_writable_dir(out_dir, "--out folder")
    return [atomic_write_text(out / "compare.md", markdown(cmp, pct)), atomic_write_text(out / "compare.csv", csv_text(cmp))]
