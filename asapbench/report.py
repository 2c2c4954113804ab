"""The renderings of result records (:class:`asapbench.record.BenchRow`): bench.csv, bench.md, bench.json and
latency_vs_megapixels.png.

Every file is written to a temporary name and renamed (``asapbench.fsutil``), so an interrupted
run never leaves a half-written table. ``asapbench report CSV [CSV ...]`` reads CSVs back with
:func:`read_csv` and renders them again with :func:`render_all`. The column glossary is in
results/README.md.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asapbench.bench.timing import COV_WARN
from asapbench.errors import UserError
from asapbench.fsutil import atomic_write_text
from asapbench.record import BenchRow

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "asapbench.bench/1"
#: the files of one result set (a run's or a report's set folder; OUT/<name> links to OUT/latest/<name>)
FILES = ("bench.csv", "bench.md", "bench.json", "latency_vs_megapixels.png")


#: fields kept in bench.json only (lists: the raw samples)
JSON_ONLY = ("samples_ms", "e2e_samples_ms")
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow) if f.name not in JSON_ONLY)
_TYPES = {f.name: f.type for f in fields(BenchRow)}


def _kind(name: str) -> str:
    """``int``, ``float``, ``bool`` or ``str``: what a column holds (None allowed for int/float)."""
    t = str(_TYPES[name])
    for k in ("int", "float", "bool"):
        if t.startswith(k):
            return k
    return "str"


_KINDS = {c: _kind(c) for c in COLUMNS}
#: the pandas dtype of each column in :func:`frame`: nullable integers, floats and booleans, and text as
#: plain Python strings (object), so that a missing number is ``<NA>`` and never a float NaN
_DTYPES = {"int": "Int64", "float": "Float64", "bool": "boolean", "str": object}


def _pd():
    """pandas, imported when a table is built (``import asapbench`` stays light)."""
    import pandas

    return pandas


def _convert(name: str, text: str) -> Any:
    kind = _KINDS[name]
    if text == "" and kind != "str":
        return None
    try:
        if kind == "int":
            return int(float(text)) if "." in text or "e" in text.lower() else int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return text.strip().lower() in ("1", "true", "yes")
    except ValueError:
        raise UserError(f"column {name!r} holds {text!r}, which is not a number; is this an asapbench bench.csv?") from None
    return text


#: column names of older result files -> today's
LEGACY_COLUMNS = {"peak_mem_mb": "peak_mem_mib"}


def row_from_dict(d: dict[str, Any]) -> BenchRow:
    """A BenchRow from a CSV/JSON record; unknown keys are ignored, missing ones take defaults."""
    if not d.get("model"):
        raise UserError("a record has no 'model' field; is this an asapbench bench.csv/bench.json?")
    d = {LEGACY_COLUMNS.get(k, k): v for k, v in d.items()}
    kw = {}
    for k in COLUMNS:
        if k in d and d[k] is not None:
            v = d[k]
            kw[k] = _convert(k, v) if isinstance(v, str) else v
    for k in JSON_ONLY:
        if isinstance(d.get(k), list):
            kw[k] = [float(x) for x in d[k]]
    return BenchRow(**kw)


def _missing(v: Any) -> bool:
    """None, pandas' NA or a float NaN: a cell without a value."""
    return v is None or v is _pd().NA or (isinstance(v, float) and math.isnan(v))


def frame(rows: Sequence[BenchRow]) -> pd.DataFrame:
    """The rows as a DataFrame, one column per field in :data:`COLUMNS` order.

    Numbers and flags use pandas' nullable dtypes (``Int64``, ``Float64``, ``boolean``): an empty
    cell is ``<NA>`` and an integer column stays integer. Text columns hold Python strings.
    """
    pd = _pd()
    return pd.DataFrame({c: pd.array([getattr(r, c) for r in rows], dtype=_DTYPES[_KINDS[c]]) for c in COLUMNS})


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------
#: a text cell starting with one of these is a formula to a spreadsheet (CSV injection): it is written with a
#: leading ``'`` (which spreadsheets show as text), and so is one that starts with ``'`` itself; :func:`read_csv`
#: drops that one ``'`` again, so that every text reads back as it was written
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return repr(v)  # shortest exact form: the CSV round-trips
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return str(v)


def csv_text(rows: Sequence[BenchRow]) -> str:
    """bench.csv as text: the header is :data:`COLUMNS`; empty cells for None, ``true``/``false``
    for flags and the shortest exact form of every float, so that :func:`read_csv` gives the rows back.
    """
    pd = _pd()
    # the cells are formatted from the rows themselves (not from frame()): a value is written as it was given
    cells = pd.DataFrame([[csv_cell(getattr(r, c)) for c in COLUMNS] for r in rows], columns=list(COLUMNS), dtype=object)
    return cells.to_csv(index=False, lineterminator="\n")


def write_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Write all rows to ``path`` atomically (temporary file + rename)."""
    return atomic_write_text(path, csv_text(rows))


def _read_cells(p: Path) -> pd.DataFrame:
    """The cells of a bench.csv as text ("" for an empty cell)."""
    pd = _pd()
    if not p.is_file():
        raise UserError(f"no such CSV file: {str(p)!r}; pass the bench.csv written by `asapbench run`")
    try:
        with warnings.catch_warnings():
            # index_col=False: a line with more cells than the header loses the extra ones (pandas warns)
            # instead of shifting every column by one. The python engine leaves the cells a short line
            # lacks NaN (the C engine would make them ""), so that they take the field's default
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            cells = pd.read_csv(p, dtype=str, keep_default_na=False, index_col=False, engine="python", encoding="utf-8")
    except pd.errors.EmptyDataError:
        cells = None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {str(p)!r}: {exc}; pass a bench.csv written by `asapbench run`") from None
    if cells is None or "model" not in cells.columns or "ms_median" not in cells.columns:
        raise UserError(f"{str(p)!r} is not an asapbench bench.csv (no 'model'/'ms_median' columns)")
    return cells


#: integer columns that must be at least 1 where a row gives them (every other number must be >= 0)
_POSITIVE = ("height", "width", "batch")


def _check_number(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` cell (None when it is): every number in a bench.csv is a finite
    count, size, time or ratio, never negative; heights, widths and batches are at least 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if name in _POSITIVE and value < 1:
        return "less than 1"
    if value < 0:
        return "negative"
    return None


def read_csv(path: str | os.PathLike) -> list[BenchRow]:
    """Rows of a bench.csv (UserError when the file is missing or is not one).

    A number that cannot be a measurement (``nan``, ``inf`` or ``1e400``, a negative time or size, a height,
    width or batch below 1) is a UserError naming the file, the line and the column: such a row is never
    plotted or ranked. A text cell written with a leading ``'`` (see :func:`csv_text`) loses that ``'``.
    """
    p = Path(path)
    cells = _read_cells(p)
    rows = []
    # a short line leaves NaN in its last cells: those take the field's default, as a missing column does
    for i, rec in enumerate(cells.to_dict("records")):
        rec = {k: v for k, v in rec.items() if isinstance(v, str)}
        for k, v in rec.items():
            if k in _KINDS and _KINDS[k] == "str" and v.startswith("'"):
                rec[k] = v[1:]
        line = i + 2  # the header is line 1 (a cell with a line break counts as one line here)
        try:
            row = row_from_dict(rec)
        except UserError as exc:
            raise UserError(f"{str(p)!r} line {line}: {exc}") from None
        for name in COLUMNS:
            why = _check_number(name, getattr(row, name))
            if why:
                raise UserError(f"{str(p)!r} line {line}, column {name!r}: {rec.get(name)!r} is {why}; "
                                "fix or delete that row (or pass the bench.csv `asapbench run` wrote)")
        if row.height < 1 or row.width < 1:  # given ones were checked above: a missing one
            raise UserError(f"{str(p)!r} line {line}: no height/width; fix or delete that row")
        rows.append(row)
    return rows


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """A bench.csv as :func:`frame` gives it: typed columns, ``<NA>`` for empty numeric cells."""
    return frame(read_csv(path))


# --------------------------------------------------------------------------------------------
# grouping shared by markdown and plot
# --------------------------------------------------------------------------------------------
#: two rows with the same values here are the same cell measured twice (merged CSVs): the last one counts
#: what identifies a cell whatever machine measured it (``asapbench compare`` matches cells across machines)
CELL_KEY_ANY_MACHINE = ("model", "preset", "overrides", "checkpoint", "backend", "input", "precision", "device",
                        "cuda_graph", "height", "width", "batch")
_CELL_KEY = [*CELL_KEY_ANY_MACHINE, "machine"]
#: the columns that name one line of a table: model, backend (+graph), precision, where it ran
_GROUP = ["model", "label", "precision", "where"]


def _view(rows: Sequence[BenchRow]) -> pd.DataFrame:
    """:func:`frame` of the rows with duplicates of a cell dropped (the last one wins, in the place of
    its last occurrence), plus the columns the tables and the plot group by: ``machine`` (the GPU name
    for CUDA rows, else the CPU model), ``label`` (backend, "+graph" for CUDA-graph rows, "+labels" for
    label-map input rows), ``res``
    ("HxW") and ``ms_per_image`` / ``e2e_ms_per_image`` (per forward call / batch).
    """
    pd = _pd()
    rows = list(rows)
    df = frame(rows)
    # the BenchRow properties are the one definition of each derived value
    df["machine"] = [r.machine for r in rows]
    df["label"] = [r.backend + (" +graph" if r.cuda_graph else "") + (f" +{r.input}" if r.input != "onehot" else "")
                   for r in rows]
    df["res"] = [r.res for r in rows]
    df["ms_per_image"] = pd.array([r.ms_per_image for r in rows], dtype="Float64")
    df["e2e_ms_per_image"] = pd.array([r.e2e_ms_per_image for r in rows], dtype="Float64")
    return df.drop_duplicates(subset=_CELL_KEY, keep="last").reset_index(drop=True)


def _timed(status: Any, ms: Any) -> bool:
    """Whether a cell has a time to plot, rank and compare: status ok and a finite time above zero (rows
    given to the library directly are not checked as :func:`read_csv` checks a file's)."""
    return status == "ok" and not _missing(ms) and math.isfinite(ms) and ms > 0


def _rows_where(df: pd.DataFrame, keep: Sequence[bool]) -> pd.DataFrame:
    """The rows of ``df`` where ``keep`` is true (also right for an empty frame, where a plain ``df[[]]``
    would select columns)."""
    return df.loc[_pd().Series(list(keep), index=df.index, dtype=bool)]


def _resolutions(df: pd.DataFrame) -> list[tuple[int, int]]:
    """The (H, W) sizes in the frame, smallest image first (then the shorter height)."""
    hw = {(int(h), int(w)) for h, w in zip(df.height, df.width)}
    return sorted(hw, key=lambda hw: (hw[0] * hw[1], hw[0]))


def _ordered(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return ""
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(v: float) -> str:
    return f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def is_subject(model: str) -> bool:
    """ASAP-Net and its tiny variant are the subject; every other model is a baseline."""
    return model == "asapnet" or model.startswith("asapnet-")


def _grid(cells: pd.DataFrame, values: Sequence[Any], index: pd.Index, columns: list[str]) -> pd.DataFrame:
    """``values`` (one per row of ``cells``) pivoted to one row per group and one column per resolution,
    in the order of ``index`` and ``columns``; a cell no row fills is missing (NaN)."""
    pd = _pd()
    if cells.empty:
        return pd.DataFrame(index=index, columns=columns, dtype=object)
    laid = cells.assign(_v=pd.Series(list(values), index=cells.index, dtype=object))
    return laid.pivot(index=_GROUP, columns="res", values="_v").reindex(index=index, columns=columns)


def _md_text(v: Any) -> str:
    """``v`` as text on one markdown line: line breaks become spaces (a text from a hand-edited CSV must not
    end a list item or a table row)."""
    return " ".join(str(v).splitlines())


def md_cell(v: Any) -> str:
    """``v`` as the text of one markdown table cell: on one line, with ``|`` escaped."""
    return _md_text(v).replace("|", "\\|")


def _md_table(table: pd.DataFrame) -> list[str]:
    """A DataFrame as GitHub markdown table lines: its column names as the header, its cells as text."""
    lines = ["| " + " | ".join(map(md_cell, table.columns)) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(map(md_cell, cells)) + " |" for cells in table.itertuples(index=False, name=None)]
    return lines


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------
def _env_lines(envs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for env in envs:
        gpu = env.get("gpu_name")
        parts = [
            f"CPU: {env.get('cpu_model') or '?'} ({env.get('cpu_count', '?')} cpus, torch threads {env.get('torch_threads', '?')})",
            f"GPU: {gpu}" + (f" (driver {env.get('driver_version')}, CUDA {env.get('cuda_version')})" if gpu else "") if gpu else "GPU: none",
            "torch " + str(env.get("torch_version") or "?"),
            "onnxruntime " + str(env.get("onnxruntime_version") or "not installed"),
            "TensorRT " + str(env.get("tensorrt_version") or "not installed"),
            "git " + str(env.get("git_sha") or "unknown"),
        ]
        if env.get("timestamp"):
            parts.append(str(env["timestamp"]))
        lines.append("- " + _md_text("; ".join(parts)))
        if env.get("command"):
            lines.append(f"  - command: `{_md_text(env['command'])}`")
        loop = env.get("loop")
        if isinstance(loop, dict) and loop:
            lines.append(
                f"  - runs per cell: warm-up >= {loop.get('warmup')} runs and >= {loop.get('warmup_seconds')} s; "
                f"timed >= {loop.get('iters')} runs and >= {loop.get('min_seconds')} s; end-to-end "
                f"{loop.get('e2e_warmup')} + {loop.get('e2e_iters')} runs; budget {loop.get('budget_s') or 'none'} s per cell"
            )
        peaks = env.get("peaks")
        if isinstance(peaks, dict) and peaks.get("backends"):
            lines.append(_peak_line(peaks, env.get("cpu_isa")))
        for g in env.get("nvidia_smi") or []:
            lines.append(
                f"  - nvidia-smi: {g.get('name')}, pstate {g.get('pstate')}, SM clock {g.get('clocks.sm')} "
                f"(max {g.get('clocks.max.sm')}), memory clock {g.get('clocks.mem')}, power limit {g.get('power.limit')}"
            )
    return lines


def _peak_line(peaks: dict[str, Any], isa: Any) -> str:
    """``  - GEMM peak ...``: each backend's fp32 and bf16 peak (GFLOP/s, or absent) and the CPU's ISA flags."""
    def one(rec: Any) -> str:
        if isinstance(rec, dict) and rec.get("gflops"):
            return f"{rec['gflops']:.1f}"
        return "absent"

    parts = [f"{name} {one(recs.get('fp32'))} / {one(recs.get('bf16'))}" for name, recs in peaks["backends"].items()]
    flags = (isa.get("flags") or []) if isinstance(isa, dict) else []
    n = peaks.get("n")
    return (f"  - GEMM peak ({n}x{n}x{n}, {peaks.get('threads')} thread(s)), fp32 / bf16 GFLOP/s: {'; '.join(parts)}; "
            f"CPU ISA: {', '.join(flags) or 'unknown'}")


_ENV_COLUMNS = ["cpu_model", "gpu_name", "driver_version", "cuda_version", "torch_version", "onnxruntime_version",
                "tensorrt_version", "git_sha"]


def _envs(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The distinct environment-column records of a frame, first appearance first."""
    return df[_ENV_COLUMNS].drop_duplicates().to_dict("records")


def _envs_from_rows(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    return _envs(frame(rows))


def incomplete_line(run_state: dict[str, Any] | None) -> str:
    """The bench.md header line of an incomplete result set ("" for a complete one)."""
    if not run_state or run_state.get("complete", True):
        return ""
    done, total = run_state.get("cells_done"), run_state.get("cells_total")
    after = f" after {done} of {total} cells" if done is not None and total is not None else ""
    return (f"**Incomplete run: {_md_text(run_state.get('reason') or 'interrupted')}{after}.** "
            "The tables hold only the finished cells.")


def _noisy(cov: Any) -> bool:
    return not _missing(cov) and cov > COV_WARN


def markdown(rows: Sequence[BenchRow], envs: Sequence[dict[str, Any]] | None = None, title: str = "asapbench results",
             run_state: dict[str, Any] | None = None) -> str:
    """The paper-style report: latency table, ASAP-Net speed-ups, fastest per resolution, backends per model,
    end-to-end, models (preset, input channels), cost, memory, notes. ``run_state`` marks an incomplete set."""
    from asapbench.counting import MAC_CONVENTION

    pd = _pd()
    df = _view(rows)
    envs = list(envs) if envs else _envs(df)
    res_cols = [f"{h}x{w}" for h, w in _resolutions(df)]
    multi_machine = df.machine.nunique() > 1
    df["where"] = [f"{d}: {m}" for d, m in zip(df.device, df.machine)] if multi_machine else list(df.device)
    groups = pd.MultiIndex.from_frame(df[_GROUP].drop_duplicates())
    cells = df.drop_duplicates(subset=[*_GROUP, "res"], keep="last")  # one row per table cell

    out = [f"# {title}", ""]
    if incomplete_line(run_state):
        out += [incomplete_line(run_state), ""]
    out.append("Environment:")
    out += _env_lines(envs)
    out += ["", f"MAC counting: {MAC_CONVENTION}. GMACs are per image.", ""]
    batches = sorted({int(b) for b in df.batch})
    out.append(
        "Times are medians in ms per image (ms per forward call / batch; batch "
        + ", ".join(map(str, batches))
        + f"), input already on the device (GPU-only time on CUDA). † marks a coefficient of variation (CoV, "
        f"in % everywhere in this file) above {COV_WARN:.0%}; a speed-up carries it when either of its cells does. "
        "A cell that produced no time shows its status (see Notes)."
    )
    out.append("")

    def latency_table(column: str, mark_noisy: bool = False) -> list[str]:
        texts = []
        for status, v, cov in zip(cells.status, cells[column].tolist(), cells["cov"].tolist()):
            if status != "ok":
                texts.append(f"*{status}*")
            elif _missing(v):
                texts.append("")
            else:
                noisy = mark_noisy and not _missing(cov) and cov > COV_WARN
                texts.append(_fmt_ms(v) + ("†" if noisy else ""))
        table = _grid(cells, texts, groups, res_cols).fillna("").reset_index()
        return _md_table(table.set_axis(["model", "backend", "precision", "device", *res_cols], axis=1))

    out += ["## Latency (ms per image, median)", ""]
    out += latency_table("ms_per_image", mark_noisy=True)
    out += ["", "## ASAP-Net speed-up (baseline median / ASAP-Net median, same backend, precision and device)", ""]
    usable = [v if _timed(status, v) else None
              for status, v in zip(cells.status, cells.ms_per_image.tolist())]
    ms = _grid(cells, usable, groups, res_cols)
    noisy = _grid(cells, [_noisy(c) for c in cells["cov"].tolist()], groups, res_cols)
    body = []
    for variant in _ordered(g[1:] for g in groups):
        subjects = [g[0] for g in groups if g[1:] == variant and is_subject(g[0])]
        baselines = [g[0] for g in groups if g[1:] == variant and not is_subject(g[0])]
        for s in subjects:
            for b in baselines:
                pairs = zip(ms.loc[(b, *variant)].tolist(), ms.loc[(s, *variant)].tolist(),
                            noisy.loc[(b, *variant)].tolist(), noisy.loc[(s, *variant)].tolist())
                cells_sb = ["" if _missing(vb) or _missing(vs) else _fmt_ratio(vb / vs) + ("†" if nb is True or ns is True else "")
                            for vb, vs, nb, ns in pairs]
                body.append([f"{s} vs {b}", *variant, *cells_sb])
    if body:
        out += _md_table(pd.DataFrame(body, columns=["comparison", "backend", "precision", "device", *res_cols]))
    else:
        out.append("(no ASAP-Net row and baseline row share a backend, precision and device)")
    out += ["", "## Fastest per resolution", ""]
    out += _fastest(cells)
    out += ["", "## Backends per model (median ms per image; speed-up over the first backend)", ""]
    out += _backend_comparison(cells)
    out += ["", "## End-to-end latency (ms per image, median; host input to host output)", ""]
    out += latency_table("e2e_ms_per_image")

    out += ["", "## Models (preset and input channels per resolution)", ""]
    out += _models_table(df, res_cols)
    out += ["", "## Cost (GMACs per image; parameters)", ""]
    models = _ordered(df.model)
    params = df[df.params.notna() & (df.params != 0)].groupby("model", sort=False).params.unique()
    first_gmacs = df[df.gmacs.notna()].drop_duplicates(subset=["model", "res"], keep="first")
    if first_gmacs.empty:
        gmacs = pd.DataFrame(index=models, columns=res_cols, dtype=object)
    else:
        gmacs = first_gmacs.pivot(index="model", columns="res", values="gmacs").astype(object).reindex(index=models, columns=res_cols)
    body = []
    for m in models:
        p = ", ".join(f"{int(v) / 1e6:.2f}M" for v in params.get(m, []))
        cost = ["" if _missing(v) else f"{v:.3g}" if v < 100 else f"{v:.1f}" for v in gmacs.loc[m].tolist()]
        body.append([m, p, *cost])
    out += _md_table(pd.DataFrame(body, columns=["model", "params", *res_cols]))

    out += ["", "## Peak memory (MiB; see mem_kind in bench.csv and results/README.md)", ""]
    out += latency_table("peak_mem_mib")

    notes = _rows_where(df, [status != "ok" or bool(note) for status, note in zip(df.status, df.note)])
    out += ["", "## Notes", ""]
    if notes.empty:
        out.append("- every cell ran; no warnings")
    for r in notes.itertuples(index=False):
        out.append(_md_text(f"- {r.model} {r.res} {r.label} {r.precision} {r.device}: **{r.status}** {r.note}").rstrip())
    out.append("")
    return "\n".join(out)


def _fastest(cells: pd.DataFrame) -> list[str]:
    """One line per resolution and device: the fastest ok cell, and the runner-up."""
    ok = _rows_where(cells, [_timed(st, v) for st, v in zip(cells.status, cells.ms_per_image.tolist())])
    if ok.empty:
        return ["(no cell produced a time)"]
    lines = []
    for h, w in _resolutions(ok):
        for where in _ordered(ok["where"]):
            sel = ok[(ok.height == h) & (ok.width == w) & (ok["where"] == where)].sort_values("ms_per_image", kind="stable")
            if sel.empty:
                continue
            recs = sel.to_dict("records")
            best = recs[0]
            text = (f"- {h}x{w} ({where}): **{best['model']} {best['label']} {best['precision']}**, "
                    f"{_fmt_ms(best['ms_per_image'])} ms" + ("†" if _noisy(best["cov"]) else ""))
            if len(recs) > 1:
                nxt = recs[1]
                text += (f"; next {nxt['model']} {nxt['label']} {nxt['precision']} {_fmt_ms(nxt['ms_per_image'])} ms "
                         f"({_fmt_ratio(nxt['ms_per_image'] / best['ms_per_image'])} slower)")
            lines.append(_md_text(text))
    return lines


def _backend_comparison(cells: pd.DataFrame) -> list[str]:
    """Per model, resolution, precision and device: every backend's median and its speed-up over the first one."""
    pd = _pd()
    ok = _rows_where(cells, [_timed(st, v) for st, v in zip(cells.status, cells.ms_per_image.tolist())])
    labels = _ordered(ok.label) if not ok.empty else []
    if len(labels) < 2:
        return ["(one backend only: nothing to compare)"]
    body = []
    for key, sel in ok.groupby(["model", "res", "precision", "where"], sort=False):
        by = {r["label"]: r for r in sel.to_dict("records")}
        if len(by) < 2:
            continue
        ref = by[next(lb for lb in labels if lb in by)]
        row = list(key)
        for lb in labels:
            r = by.get(lb)
            if r is None:
                row.append("")
                continue
            mark = "†" if _noisy(r["cov"]) or _noisy(ref["cov"]) else ""
            row.append(f"{_fmt_ms(r['ms_per_image'])} ({_fmt_ratio(ref['ms_per_image'] / r['ms_per_image'])}){mark}")
        body.append(row)
    if not body:
        return ["(no model ran on two backends at the same resolution)"]
    return _md_table(pd.DataFrame(body, columns=["model", "res", "precision", "device", *labels]))


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _models_table(df: pd.DataFrame, res_cols: list[str]) -> list[str]:
    """Which preset (and how many input channels) each model ran with at each resolution."""
    pd = _pd()
    body = []
    for m in _ordered(df.model):
        sel = df[df.model == m]
        row = [m]
        for rc in res_cols:
            at = sel[sel.res == rc]
            if at.empty:
                row.append("")
                continue
            r = at.iloc[0]
            preset = r["preset"] or "?"
            extra = f", {r['overrides']}" if r["overrides"] else ""
            nc = "" if _missing(r["input_nc"]) else f"; {int(r['input_nc'])} input channels"
            sizes = {k: b for k, b in zip(at["input"], at["input_bytes"]) if not _missing(b)}
            if sizes:  # the host input per image each input kind copies in (labels: ~input_nc x 4 / 8 smaller)
                nc += "; input " + ", ".join(f"{_fmt_bytes(int(b))} ({k})" for k, b in sizes.items())
            row.append(f"{preset}{extra}{nc}")
        body.append(row)
    return _md_table(pd.DataFrame(body, columns=["model", *res_cols]))


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------
def json_obj(rows: Sequence[BenchRow], envs: Sequence[dict[str, Any]] | None = None, sources: Sequence[str] = (),
             run_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """bench.json: schema, ``complete`` (false with ``incomplete`` = reason and counts for an interrupted
    run), environments, columns and rows (each with its raw ``samples_ms`` / ``e2e_samples_ms``)."""
    envs = list(envs) if envs else _envs_from_rows(rows)
    obj: dict[str, Any] = {"schema": SCHEMA}
    complete = not run_state or bool(run_state.get("complete", True))
    obj["complete"] = complete
    if not complete:
        obj["incomplete"] = {k: run_state.get(k) for k in ("reason", "cells_done", "cells_total")}
    obj["environment"] = envs[0] if len(envs) == 1 else None
    obj["environments"] = envs
    if sources:
        obj["sources"] = list(sources)
    obj["columns"] = list(COLUMNS)
    obj["rows"] = [r.as_dict() for r in rows]
    return obj


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------
def _bars(ax, df: pd.DataFrame, machines: list[str]) -> None:
    """One horizontal bar per cell (one resolution), fastest at the top; noisy cells hatched and marked †."""
    colors = __import__("matplotlib.pyplot").pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    models = _ordered(df.model)
    recs = sorted(df.to_dict("records"), key=lambda r: r["ms_per_image"], reverse=True)
    labels, values = [], []
    for i, r in enumerate(recs):
        noisy = _noisy(r["cov"])
        labels.append(f"{r['model']} · {r['label']} {r['precision']} ({r['device']}"
                      f"{': ' + r['machine'] if len(machines) > 1 else ''})" + (" †" if noisy else ""))
        values.append(float(r["ms_per_image"]))
        ax.barh(i, values[-1], color=colors[models.index(r["model"]) % len(colors)], hatch="//" if noisy else None,
                edgecolor="black" if noisy else None)
        ax.text(values[-1], i, f" {_fmt_ms(values[-1])}", va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xscale("log")
    (h, w), = _resolutions(df)
    ax.set_xlabel(f"latency, ms per image (median, log scale); † = CoV > {COV_WARN:.0%}")
    ax.set_title(f"Latency at {h}x{w}")
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _input_groups(df) -> list[str]:
    """Per row: "" where its model's rows all take the same input channels, else the row's group, e.g.
    "cityscapes, cityscapes-1024: 36 ch" (the presets of the model with that many input channels), so
    that the plot draws ASAP-Net's Cityscapes and facades presets as separate, labelled lines."""
    nc = ["?" if _missing(v) else str(int(v)) for v in df.input_nc.tolist()]
    several = {m for m in _ordered(df.model) if len({c for c, mm in zip(nc, df.model) if mm == m}) > 1}
    presets: dict[tuple[str, str], list[str]] = {}
    for m, c, p in zip(df.model, nc, df.preset):
        presets.setdefault((m, c), [])
        if not _missing(p) and p and p not in presets[(m, c)]:
            presets[(m, c)].append(str(p))
    return [f"{', '.join(presets[(m, c)])}: {c} ch" if m in several else "" for m, c in zip(df.model, nc)]


def plot_png(rows: Sequence[BenchRow]) -> bytes:
    """The PNG bytes of latency_vs_megapixels.png: log-log latency (ms per image, median) against megapixels,
    one line per model x backend; with one resolution, one bar per model x backend. Noisy cells (CoV above
    the threshold) are marked †."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    df = _view(rows)
    df = _rows_where(df, [_timed(status, v) for status, v in zip(df.status, df.ms_per_image.tolist())])
    machines = _ordered(df.machine)
    fig, ax = plt.subplots(figsize=(9.0, 5.0), dpi=120)
    if len(_resolutions(df)) == 1:
        _bars(ax, df, machines)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()
    models = _ordered(df.model)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = _input_groups(df)  # presets of other input channels are other lines, never joined
    line_of = list(zip(df.model, groups, df.label, df.precision, df.device, df.machine))
    lines = _ordered(line_of)
    variants = _ordered(line[1:] for line in lines)
    points = list(zip(df.height * df.width / 1e6, df.ms_per_image.tolist()))
    for key in lines:
        pts = sorted(pt for pt, line in zip(points, line_of) if line == key)
        mi, vi = models.index(key[0]), variants.index(key[1:])
        group = f" [{key[1]}]" if key[1] else ""
        label = f"{key[0]}{group} · {key[2]} {key[3]} ({key[4]}{': ' + key[5] if len(machines) > 1 else ''})"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=styles[vi % len(styles)],
                marker=markers[vi % len(markers)], color=colors[mi % len(colors)], label=label)
    for (x, y), cov in zip(points, df["cov"].tolist()):
        if _noisy(cov):  # noisy cells: a hollow ring and a dagger
            ax.plot([x], [y], marker="o", markersize=11, markerfacecolor="none", markeredgecolor="red", linestyle="")
            ax.annotate("†", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color="red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if not df.empty:
        from matplotlib.ticker import NullFormatter

        ticks: dict[float, list[str]] = {}
        for h, w in _resolutions(df):
            ticks.setdefault(round(h * w / 1e6, 6), []).append(f"{h}x{w}")
        ax.set_xticks(list(ticks), [f"{' / '.join(v)}\n{k:.3g} MP" for k, v in ticks.items()], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("image size (megapixels, log scale)")
    ax.set_ylabel("latency, ms per image (median)")
    ax.set_title(f"Latency vs resolution (red ring † = CoV > {COV_WARN:.0%})")
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no cell produced a time", ha="center", va="center", transform=ax.transAxes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# all four
# --------------------------------------------------------------------------------------------
def render_all(rows: Sequence[BenchRow], out_dir: str | os.PathLike, envs: Sequence[dict[str, Any]] | None = None,
               sources: Sequence[str] = (), run_state: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write bench.csv, bench.md, bench.json and latency_vs_megapixels.png into ``out_dir`` as one set.

    All four are rendered first, then written to temporary names, then renamed one after the other
    (no work between the renames), so the folder holds the old set or the new one, never a mix of a
    new CSV and an old report. ``run_state`` (``complete``, ``reason``, ``cells_done``, ``cells_total``)
    marks an incomplete set in bench.md and bench.json.
    """
    from asapbench.fsutil import replace_together

    out = Path(out_dir)
    rows = list(rows)
    contents = {
        "bench.csv": csv_text(rows).encode("utf-8"),
        "bench.md": markdown(rows, envs, run_state=run_state).encode("utf-8"),
        "bench.json": (json.dumps(json_obj(rows, envs, sources, run_state), indent=2, default=str) + "\n").encode("utf-8"),
        "latency_vs_megapixels.png": plot_png(rows),
    }
    return replace_together(out, contents)


# --------------------------------------------------------------------------------------------
# the layout of an --out folder: one folder per result set, ``latest`` switched with one rename
# --------------------------------------------------------------------------------------------
#: in-progress rows of a running sweep, in the run's own set folder
PARTIAL_CSV = "bench.partial.csv"
#: the symbolic link in an --out folder that names its newest result set; ``OUT/bench.csv`` (and the other
#: three) are links to ``latest/bench.csv``, so that ``OUT/bench.csv`` is always the newest complete set
LATEST = "latest"
#: suffix of the folder of a run that was killed before it finished (its rows are in its bench.partial.csv)
KILLED = "-killed"


def new_set_dir(out_dir: str | os.PathLike, kind: str = "run") -> Path:
    """Create a fresh folder ``OUT/<kind>-YYYYmmdd-HHMMSS[-N]`` for one result set and return it."""
    import time

    out = Path(out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        d = out / (f"{kind}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise UserError(f"cannot create a result folder in {str(out)!r}; pass another --out folder")


def _set_name(out: Path, kind: str, mtime: float, suffix: str = "") -> Path:
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(mtime))
    for n in range(1, 10_000):
        d = out / (f"{kind}-{stamp}" + (f"-{n}" if n > 1 else "") + suffix)
        if not os.path.lexists(d):
            return d
    raise UserError(f"cannot create a result folder in {str(out)!r}; pass another --out folder")


def _move_legacy(out: Path) -> Path | None:
    """Result files an older asapbench wrote directly into ``out`` (plain files, not links): moved into a set
    folder of their own (named by their time), which is returned; None when there are none."""
    names = [n for n in FILES if (out / n).is_file() and not (out / n).is_symlink()]
    if not names:
        return None
    d = _set_name(out, "earlier", max((out / n).stat().st_mtime for n in names))
    d.mkdir()
    for n in names:
        os.replace(out / n, d / n)
    return d


def _link(out: Path, name: str, target: str) -> None:
    """Make ``out/name`` a symbolic link to ``target`` with one rename (a reader sees the old or the new link)."""
    p = out / name
    if p.is_symlink() and os.readlink(p) == target:
        return
    if p.exists() and not p.is_symlink() and p.is_dir():
        raise UserError(f"{str(p)!r} is a folder of its own; move it away, or pass another --out folder")
    tmp = out / f".{name}.{os.getpid()}.link"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, p)
    except OSError as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot switch {str(p)!r} to the new result set ({exc.strerror or exc}); the set is in "
                        f"{str(out / target)!r}") from None


def publish_set(out_dir: str | os.PathLike, set_dir: str | os.PathLike) -> Path | None:
    """Make ``set_dir`` (a folder in ``out_dir`` holding the four files) the newest set of ``out_dir``.

    One rename switches ``OUT/latest`` to it, so a reader of ``OUT/latest/*`` or ``OUT/bench.csv`` (links to
    ``latest/...``) sees the earlier set or this one, never a mix; every earlier set keeps its own folder.
    Result files of the older layout (plain files in ``OUT``) are first moved into a folder of their own,
    which is returned (None otherwise).
    """
    out, d = Path(out_dir), Path(set_dir)
    moved = _move_legacy(out)
    _link(out, LATEST, d.name)
    for n in FILES:
        _link(out, n, f"{LATEST}/{n}")
    return moved


def keep_killed_partials(out_dir: str | os.PathLike) -> list[Path]:
    """The rows of runs into ``out_dir`` that were killed before they finished (a ``run-*`` folder with a
    ``bench.partial.csv`` and no ``bench.csv``), each renamed aside once to a folder ending in ``-killed``, so that nothing
    deletes them and the caller can say where they are; returns those ``bench.partial.csv`` paths.

    Call it holding the folder's lock (no live run is then writing there). A ``bench.partial.csv`` directly in
    ``OUT`` (the older layout) moves into such a folder too.
    """
    out = Path(out_dir)
    kept: list[Path] = []
    top = out / PARTIAL_CSV
    if top.is_file() and not top.is_symlink():
        d = _set_name(out, "run", top.stat().st_mtime, KILLED)
        d.mkdir()
        os.replace(top, d / PARTIAL_CSV)
        kept.append(d / PARTIAL_CSV)
    for d in sorted(out.iterdir()):
        if d.is_symlink() or not d.is_dir() or not d.name.startswith("run-") or d.name.endswith(KILLED):
            continue
        if (d / PARTIAL_CSV).is_file() and not (d / "bench.csv").exists():
            aside = out / (d.name + KILLED)
            if os.path.lexists(aside):
                continue
            os.replace(d, aside)
            kept.append(aside / PARTIAL_CSV)
    return kept


def _sibling_json(csv_path: Path) -> dict[str, Any]:
    """The bench.json of the set a bench.csv belongs to ({} when there is none or it cannot be read)."""
    from asapbench.fsutil import read_json

    j = csv_path.parent / "bench.json"
    if not j.is_file():
        return {}
    try:
        obj = read_json(j, "bench.json")
    except UserError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _envs_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    envs = obj.get("environments") or ([obj["environment"]] if obj.get("environment") else [])
    return [e for e in envs if isinstance(e, dict)]


def _state_of(csv_path: Path, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The run state of one input of a merge: None when complete, else its ``incomplete`` record."""
    if csv_path.name == PARTIAL_CSV:
        return {"complete": False, "reason": "a run that did not finish (its bench.partial.csv)",
                "cells_done": None, "cells_total": None}
    if obj.get("complete", True) is False:
        inc = obj.get("incomplete") if isinstance(obj.get("incomplete"), dict) else {}
        return {"complete": False, **{k: inc.get(k) for k in ("reason", "cells_done", "cells_total")}}
    return None


def resolve_bench_csv(path: str | os.PathLike) -> Path:
    """A bench.csv given as the file or as the folder holding it (``asapbench run --out``: through ``latest``;
    a killed run's folder: its bench.partial.csv), with links resolved; UserError for a folder without one."""
    p = Path(path)
    if p.is_dir():  # `asapbench report OUT`: the bench.csv in that folder (or a killed run's partial rows)
        if (p / "bench.csv").is_file():
            p = p / "bench.csv"
        elif (p / PARTIAL_CSV).is_file():
            p = p / PARTIAL_CSV
        else:
            raise UserError(f"{str(p)!r} is a folder without a bench.csv; pass a bench.csv or the --out folder of a run")
    if p.is_file():
        p = p.resolve()  # OUT/bench.csv -> the set folder, so that its bench.json is of the same set
    return p


def cell_label(r: BenchRow, machine: bool = True) -> str:
    """One line naming a cell: model, size, backend, precision, device, machine (and input, batch, CUDA graph,
    preset, overrides and checkpoint where set)."""
    extra = [f"input {r.input}"] if r.input != "onehot" else []
    extra += [f"batch {r.batch}"] if r.batch != 1 else []
    extra += ["+graph"] if r.cuda_graph else []
    extra += [r.preset] if r.preset else []
    extra += [r.overrides] if r.overrides else []
    extra += [f"checkpoint {r.checkpoint}"] if r.checkpoint else []
    where = f" on {r.machine}" if machine else ""
    return f"{r.model} {r.res} {r.backend} {r.precision} {r.device}{where}" + (f" ({', '.join(extra)})" if extra else "")


def replaced_cells(sets: Sequence[tuple[str, Sequence[BenchRow]]]) -> list[str]:
    """For result sets merged in this order, one line per cell that a later set replaces ("CELL: B replaces A")."""
    first: dict[tuple, str] = {}
    lines = []
    for source, rows in sets:
        seen_here = set()
        for r in rows:
            key = tuple(getattr(r, k) for k in _CELL_KEY)
            if key in seen_here:
                continue
            seen_here.add(key)
            if key in first and first[key] != source:
                lines.append(f"{cell_label(r)}: {source} replaces {first[key]}")
            first[key] = source
    return lines


def merge_report(csv_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Read one or more bench.csv files, merge their rows and render all four outputs as a new set in
    ``out_dir`` (a folder ``report-...`` that ``OUT/latest`` then names, see :func:`publish_set`: an earlier
    set there, the input's own included, is kept).

    A folder stands for its bench.csv (through ``latest``), or for the bench.partial.csv of a run that did not
    finish. Environments come from the ``bench.json`` of each input's set where present, else from the rows'
    environment columns. The merged set is complete only if every input is: an incomplete input (or a
    bench.partial.csv) makes it incomplete, with the reason in bench.md and bench.json. When the same cell
    appears in two files, the later file wins in the tables. Returns the written paths and one line per cell
    so replaced (:func:`replaced_cells`).
    """
    from asapbench.fsutil import FolderLock, ensure_writable_dir

    if not csv_paths:
        raise UserError("no CSV given; pass one or more bench.csv files written by `asapbench run`")
    rows: list[BenchRow] = []
    envs: list[dict[str, Any]] = []
    states: list[tuple[str, dict[str, Any]]] = []
    sets = []
    for given in csv_paths:
        p = resolve_bench_csv(given)
        these = read_csv(p)
        sets.append((str(given), these))
        rows += these
        obj = _sibling_json(p)
        for e in _envs_of(obj) or _envs_from_rows(these):
            if e not in envs:
                envs.append(e)
        state = _state_of(p, obj)
        if state:
            states.append((str(given), state))
    run_state = None
    if len(states) == 1 and len(csv_paths) == 1:
        run_state = states[0][1]
    elif states:
        run_state = {"complete": False, "cells_done": None, "cells_total": None,
                     "reason": f"merged {len(states)} incomplete input(s) of {len(csv_paths)}: "
                               + "; ".join(f"{g} ({s.get('reason') or 'incomplete'})" for g, s in states)}
    out = ensure_writable_dir(out_dir, "--out folder")
    with FolderLock(out, "--out"):
        set_dir = new_set_dir(out, "report")
        try:
            paths = render_all(rows, set_dir, envs, sources=[str(p) for p in csv_paths], run_state=run_state)
        except BaseException:
            import shutil

            shutil.rmtree(set_dir, ignore_errors=True)
            raise
        publish_set(out, set_dir)
    return paths, replaced_cells(sets)
