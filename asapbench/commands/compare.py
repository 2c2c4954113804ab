"""`asapbench compare A B`: two result sets side by side, with the noise of each ratio (and a CI gate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


class Regressed(Exception):
    """A cell got slower beyond the noise and the --fail-on-regression threshold: exit code 1."""

    asapbench_exit = True
    exit_code = 1


def compare_sets(a: str | Path, b: str | Path, metric: str = "device", fail_on_regression: float | None = None,
                 out: str | Path | None = None):
    """Compare result sets ``a`` and ``b`` (bench.csv files or run folders); write compare.md/csv into ``out``
    when given. Returns the :class:`asapbench.compare.Comparison`."""
    from asapbench import compare as C
    from asapbench.bounds import check

    check("--fail-on-regression", fail_on_regression)
    cmp = C.compare_paths(a, b, metric)
    if out is not None:
        C.write(cmp, out, fail_on_regression)
    return cmp


def _print(cmp, pct: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from asapbench import compare as C

    console = Console()
    console.print(f"A: {cmp.a} ({', '.join(cmp.machines_a)})", highlight=False, soft_wrap=True)
    console.print(f"B: {cmp.b} ({', '.join(cmp.machines_b)})", highlight=False, soft_wrap=True)
    rows = C.table_rows(cmp)
    if rows:
        table = Table(title=f"B/A, {'device' if cmp.metric == 'device' else 'end-to-end'} median ms per image")
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("cell", "verdict") else "right",
                             overflow="fold" if col == "cell" else "ellipsis", no_wrap=col != "cell")
        for r in rows:
            style = {"slower": "red", "faster": "green"}.get(r["verdict"])
            table.add_row(*r.values(), style=style)
        console.print(table)
    else:
        console.print("no cell is in both result sets")
    for name, only in (("A", cmp.only_a), ("B", cmp.only_b)):
        for label in only:
            console.print(f"only in {name}: {label}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_cmd(
        a: Annotated[Path, typer.Argument(help="The reference result set: a bench.csv or a run's --out folder.")],
        b: Annotated[Path, typer.Argument(help="The result set to judge against A.")],
        metric: Annotated[str, typer.Option("--metric", help="device (input on the device) or e2e (host to host).")] = "device",
        fail_on_regression: Annotated[Optional[float], typer.Option(
            "--fail-on-regression", metavar="PCT",
            help="Exit 1 when a cell of B is slower than A by more than PCT percent and beyond the noise.")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write compare.md and compare.csv here.")] = None,
    ) -> None:
        """Compare two result sets cell by cell: the ratio B/A with its noise; cells only in one set listed."""
        cmp = compare_sets(a, b, metric, fail_on_regression, out)
        _print(cmp, fail_on_regression)
        if out is not None:
            typer.echo(f"wrote compare.md, compare.csv to {out}")
        if fail_on_regression is not None:
            reg = cmp.regressions(fail_on_regression)
            if reg:
                raise Regressed(f"{len(reg)} cell(s) slower than {cmp.a} by more than {fail_on_regression:g}% and beyond "
                                f"the noise: " + "; ".join(f"{c.label} x{c.ratio:.2f}" for c in reg))
