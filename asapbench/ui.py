"""Console displays that fit their terminal: columns are left out before any number or word is cut.

:class:`FitProgress` is a rich ``Progress`` whose optional columns (elapsed time, the bar, loss details)
are dropped, in a given order, when the line would not fit the console; :func:`fit_table` does the same
for a table of finished results. rich itself would shrink every column evenly and end them in "…".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.progress import BarColumn, Progress

#: the narrowest bar worth showing; below it the bar is dropped (when it may be)
MIN_BAR = 10


class FitProgress(Progress):
    """A ``Progress`` that leaves out the columns in ``drop`` (first to go first) until its line fits.

    Wrapping text columns (``table_column=Column(no_wrap=False)``) wrap at spaces when even the line
    without the droppable columns is too wide; no-wrap columns (numbers) are never shrunk.
    """

    def __init__(self, *columns: Any, drop: Sequence[Any] = (), **kwargs: Any) -> None:
        self.drop = list(drop)  # set first: Progress.__init__ renders once
        self._bar_width = {id(c): c.bar_width for c in columns if isinstance(c, BarColumn)}
        super().__init__(*columns, **kwargs)

    def _width(self, column: Any, tasks: Sequence[Any], at_least: bool) -> int:
        """Cells the column needs for its widest task (a bar: the minimum; wrapping text: ``at_least``
        asks for its longest word, else its whole text)."""
        from rich.measure import Measurement

        if isinstance(column, BarColumn):
            return MIN_BAR
        console, widest = self.console, 0
        wraps = not isinstance(column, str) and not column.get_table_column().no_wrap
        for task in tasks:
            r = column.format(task=task) if isinstance(column, str) else column(task)
            m = Measurement.get(console, console.options, r)
            widest = max(widest, m.minimum if (wraps and at_least) else m.maximum)
        return widest

    def fitted_columns(self, tasks: Sequence[Any]) -> list[Any]:
        """The columns shown at the console's width (droppable ones left out in order until the rest fit)."""
        tasks = [t for t in tasks if t.visible]
        if getattr(self, "live", None) is None:  # rendered once inside Progress.__init__, before the console is set
            return list(self.columns)
        width = self.console.width
        keep = list(self.columns)

        def need(cols: list[Any]) -> int:
            return sum(self._width(c, tasks, at_least=False) for c in cols) + max(0, len(cols) - 1)

        for col in self.drop:
            if need(keep) <= width:
                break
            if col in keep:
                keep.remove(col)
        spare = width - need(keep)
        for col in keep:  # a bar takes what is left, up to its own width
            if isinstance(col, BarColumn):
                pref = self._bar_width[id(col)]
                col.bar_width = max(MIN_BAR, min(pref or width, MIN_BAR + spare))
        return keep

    def make_tasks_table(self, tasks):
        tasks = list(tasks)
        shown = self.fitted_columns(tasks)
        columns = self.columns
        self.columns = tuple(shown)
        try:
            return super().make_tasks_table(tasks)
        finally:
            self.columns = columns


def fit_table(console: Any, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
              drop: Sequence[str] = (), width: int | None = None, **table_kwargs: Any):
    """A rich ``Table`` of ``columns`` ((header, justify) pairs) and ``rows`` that fits ``width`` (default:
    the console's) by leaving out the headers in ``drop``, first to go first, instead of cutting cells."""
    from rich.measure import Measurement
    from rich.table import Table

    width = width or console.width
    keep = [h for h, _ in columns]

    def build(names: list[str]):
        t = Table(**table_kwargs)
        idx = [i for i, (h, _) in enumerate(columns) if h in names]
        for i in idx:
            t.add_column(columns[i][0], justify=columns[i][1], no_wrap=True)
        for row in rows:
            t.add_row(*(row[i] for i in idx))
        return t

    table = build(keep)
    for name in drop:
        if Measurement.get(console, console.options.update_width(10**4), table).maximum <= width:
            break
        if name in keep:
            keep.remove(name)
            table = build(keep)
    return table

