"""One result record (:class:`BenchRow`) and its renderings: bench.csv, bench.md, bench.json and
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asapbench.bench.timing import COV_WARN
from asapbench.errors import UserError
from asapbench.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "asapbench.bench/1"
STATUSES = ("ok", "oom", "unsupported", "budget", "error")
FILES = ("bench.csv", "bench.md", "bench.json", "latency_vs_megapixels.png")


@dataclass
class BenchRow:
    """One cell of a sweep: a model at one resolution on one backend/precision/device.

    ``ms_*`` are per forward call (one batch), measured with the input already on the device
    (GPU-only time); ``e2e_ms_*`` go from a host float32 tensor to a host array. Empty (None) where
    the cell did not produce a time (``status`` != ``ok``); ``note`` says why.
    """

    model: str
    preset: str = ""
    overrides: str = ""  # constructor overrides on top of the preset, e.g. "scale=64"
    checkpoint: str = ""
    backend: str = ""  # torch, torch-compile, onnxruntime, onnxruntime-trt, tensorrt
    provider: str = ""  # what actually ran: e.g. CUDAExecutionProvider, "cpu", "cuda"
    precision: str = "fp32"
    device: str = "cpu"
    cuda_graph: bool = False
    height: int = 0
    width: int = 0
    batch: int = 1
    input_nc: int | None = None  # channels of the model's input (label one-hot + instance edges)
    input: str = "onehot"  # what the model took: onehot (official float tensor) or labels (int32 label map, --input labels)
    input_bytes: int | None = None  # bytes of one image's host input (what end-to-end time copies in)
    params: int | None = None
    macs: int | None = None  # per image (counted at batch 1), asapbench.counting.count_macs
    gmacs: float | None = None  # per image, 1e9 MACs
    ms_median: float | None = None
    ms_mean: float | None = None
    ms_p90: float | None = None
    ms_p99: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    ms_std: float | None = None
    cov: float | None = None
    iters: int | None = None
    warmup_iters: int | None = None
    timed_s: float | None = None
    img_per_s: float | None = None
    e2e_ms_median: float | None = None
    e2e_ms_mean: float | None = None
    e2e_iters: int | None = None
    peak_mem_mib: float | None = None
    mem_kind: str = ""
    threads: int | None = None
    status: str = "ok"
    note: str = ""
    cell_s: float | None = None  # wall seconds the whole cell took (build, export, warm-up, timing)
    # achieved rate against the machine's GEMM peak in the backend's library at the row's precision (CPU rows)
    gflops: float | None = None  # 2 x MACs x batch / ms_median
    peak_gflops: float | None = None  # the peak measured at the start of the run (bench.json: environment.peaks)
    peak_fraction: float | None = None  # gflops / peak_gflops
    # environment columns (the full snapshot is in bench.json)
    cpu_model: str = ""
    gpu_name: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    torch_version: str = ""
    onnxruntime_version: str = ""
    tensorrt_version: str = ""
    git_sha: str = ""
    timestamp: str = ""
    # raw per-run times (ms) of the timed and end-to-end runs: bench.json only (not CSV columns)
    samples_ms: list[float] | None = field(default=None, compare=False)
    e2e_samples_ms: list[float] | None = field(default=None, compare=False)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def res(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6

    @property
    def ms_per_image(self) -> float | None:
        return None if self.ms_median is None else self.ms_median / max(1, self.batch)

    @property
    def e2e_ms_per_image(self) -> float | None:
        return None if self.e2e_ms_median is None else self.e2e_ms_median / max(1, self.batch)

    @property
    def machine(self) -> str:
        """The GPU name for CUDA rows, else the CPU model."""
        if self.device == "cuda" and self.gpu_name:
            return self.gpu_name
        return self.cpu_model or self.device

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return repr(v)  # shortest exact form: the CSV round-trips
    return str(v)


def csv_text(rows: Sequence[BenchRow]) -> str:
    """bench.csv as text: the header is :data:`COLUMNS`; empty cells for None, ``true``/``false``
    for flags and the shortest exact form of every float, so that :func:`read_csv` gives the rows back.
    """
    pd = _pd()
    # the cells are formatted from the rows themselves (not from frame()): a value is written as it was given
    cells = pd.DataFrame([[_csv_value(getattr(r, c)) for c in COLUMNS] for r in rows], columns=list(COLUMNS), dtype=object)
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


def read_csv(path: str | os.PathLike) -> list[BenchRow]:
    """Rows of a bench.csv (UserError when the file is missing or is not one)."""
    cells = _read_cells(Path(path))
    # a short line leaves NaN in its last cells: those take the field's default, as a missing column does
    return [row_from_dict({k: v for k, v in rec.items() if isinstance(v, str)}) for rec in cells.to_dict("records")]


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """A bench.csv as :func:`frame` gives it: typed columns, ``<NA>`` for empty numeric cells."""
    return frame(read_csv(path))


# --------------------------------------------------------------------------------------------
# grouping shared by markdown and plot
# --------------------------------------------------------------------------------------------
#: two rows with the same values here are the same cell measured twice (merged CSVs): the last one counts
_CELL_KEY = ["model", "preset", "overrides", "checkpoint", "backend", "input", "precision", "device", "cuda_graph",
             "height", "width", "batch", "machine"]
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


def _md_table(table: pd.DataFrame) -> list[str]:
    """A DataFrame as GitHub markdown table lines: its column names as the header, its cells as text."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(map(str, cells)) + " |" for cells in table.itertuples(index=False, name=None)]
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
        lines.append("- " + "; ".join(parts))
        if env.get("command"):
            lines.append(f"  - command: `{env['command']}`")
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
    return (f"**Incomplete run: {run_state.get('reason') or 'interrupted'} after {run_state.get('cells_done')} of "
            f"{run_state.get('cells_total')} cells.** The tables hold only the finished cells.")


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
    usable = [v if status == "ok" and not _missing(v) and v else None
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
        out.append(f"- {r.model} {r.res} {r.label} {r.precision} {r.device}: **{r.status}** {r.note}".rstrip())
    out.append("")
    return "\n".join(out)


def _fastest(cells: pd.DataFrame) -> list[str]:
    """One line per resolution and device: the fastest ok cell, and the runner-up."""
    ok = _rows_where(cells, [st == "ok" and not _missing(v) for st, v in zip(cells.status, cells.ms_per_image.tolist())])
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
            lines.append(text)
    return lines


def _backend_comparison(cells: pd.DataFrame) -> list[str]:
    """Per model, resolution, precision and device: every backend's median and its speed-up over the first one."""
    pd = _pd()
    ok = _rows_where(cells, [st == "ok" and not _missing(v) for st, v in zip(cells.status, cells.ms_per_image.tolist())])
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


def write_markdown(rows: Sequence[BenchRow], path: str | os.PathLike, envs: Sequence[dict[str, Any]] | None = None,
                   run_state: dict[str, Any] | None = None) -> Path:
    return atomic_write_text(path, markdown(rows, envs, run_state=run_state))


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


def write_json(rows: Sequence[BenchRow], path: str | os.PathLike, envs: Sequence[dict[str, Any]] | None = None,
               sources: Sequence[str] = (), run_state: dict[str, Any] | None = None) -> Path:
    return atomic_write_json(path, json_obj(rows, envs, sources, run_state))


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------
def plot_latency(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Log-log latency (ms per image, median) against megapixels, one line per model x backend; with one
    resolution, one bar per model x backend. Noisy cells (CoV above the threshold) are marked †."""
    return atomic_write_bytes(path, plot_png(rows))


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


def plot_png(rows: Sequence[BenchRow]) -> bytes:
    """The PNG bytes of latency_vs_megapixels.png (see :func:`plot_latency`)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    df = _view(rows)
    df = _rows_where(df, [status == "ok" and not _missing(v) and bool(v) for status, v in zip(df.status, df.ms_per_image.tolist())])
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
    line_of = list(zip(df.model, df.label, df.precision, df.device, df.machine))
    lines = _ordered(line_of)
    variants = _ordered(line[1:] for line in lines)
    points = list(zip(df.height * df.width / 1e6, df.ms_per_image.tolist()))
    for key in lines:
        pts = sorted(pt for pt, line in zip(points, line_of) if line == key)
        mi, vi = models.index(key[0]), variants.index(key[1:])
        label = f"{key[0]} · {key[1]} {key[2]} ({key[3]}{': ' + key[4] if len(machines) > 1 else ''})"
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


def _sibling_envs(csv_path: Path) -> list[dict[str, Any]]:
    j = csv_path.parent / "bench.json"
    if not j.is_file():
        return []
    try:
        obj = json.loads(j.read_text())
    except (OSError, ValueError):
        return []
    envs = obj.get("environments") or ([obj["environment"]] if obj.get("environment") else [])
    return [e for e in envs if isinstance(e, dict)]


def merge_report(csv_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Read one or more bench.csv files, merge their rows and render all four outputs into ``out_dir``.

    Environments come from a ``bench.json`` beside each CSV where present, else from the rows'
    environment columns. When the same cell appears twice, the later file wins in the tables.
    """
    from asapbench.fsutil import ensure_writable_dir

    if not csv_paths:
        raise UserError("no CSV given; pass one or more bench.csv files written by `asapbench run`")
    rows: list[BenchRow] = []
    envs: list[dict[str, Any]] = []
    for p in csv_paths:
        p = Path(p)
        if p.is_dir():  # `asapbench report OUT`: the bench.csv in that folder
            if not (p / "bench.csv").is_file():
                raise UserError(f"{str(p)!r} is a folder without a bench.csv; pass a bench.csv or the --out folder of a run")
            p = p / "bench.csv"
        these = read_csv(p)
        rows += these
        for e in _sibling_envs(p) or _envs_from_rows(these):
            if e not in envs:
                envs.append(e)
    ensure_writable_dir(out_dir, "--out folder")
    return render_all(rows, out_dir, envs, sources=[str(p) for p in csv_paths])
