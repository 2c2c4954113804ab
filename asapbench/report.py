"""One result record (:class:`BenchRow`) and its renderings: bench.csv, bench.md, bench.json and
latency_vs_megapixels.png.

Every file is written to a temporary name and renamed (``asapbench.fsutil``), so an interrupted
run never leaves a half-written table. ``asapbench report CSV [CSV ...]`` reads CSVs back with
:func:`read_csv` and renders them again with :func:`render_all`. The column glossary is in
results/README.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from asapbench.errors import UserError
from asapbench.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

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
    params: int | None = None
    macs: int | None = None  # per forward call (batch images), asapbench.counting.count_macs
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
    peak_mem_mb: float | None = None
    mem_kind: str = ""
    threads: int | None = None
    status: str = "ok"
    note: str = ""
    cell_s: float | None = None  # wall seconds the whole cell took (build, export, warm-up, timing)
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


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow))
_TYPES = {f.name: f.type for f in fields(BenchRow)}


def _convert(name: str, text: str) -> Any:
    t = str(_TYPES[name])
    if text == "" and t != "str":
        return None
    try:
        if t.startswith("int"):
            return int(float(text)) if "." in text or "e" in text.lower() else int(text)
        if t.startswith("float"):
            return float(text)
        if t == "bool":
            return text.strip().lower() in ("1", "true", "yes")
    except ValueError:
        raise UserError(f"column {name!r} holds {text!r}, which is not a number; is this an asapbench bench.csv?") from None
    return text


def row_from_dict(d: dict[str, Any]) -> BenchRow:
    """A BenchRow from a CSV/JSON record; unknown keys are ignored, missing ones take defaults."""
    if not d.get("model"):
        raise UserError("a record has no 'model' field; is this an asapbench bench.csv/bench.json?")
    kw = {}
    for k in COLUMNS:
        if k in d and d[k] is not None:
            v = d[k]
            kw[k] = _convert(k, v) if isinstance(v, str) else v
    return BenchRow(**kw)


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
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        d = r.as_dict()
        w.writerow([_csv_value(d[c]) for c in COLUMNS])
    return buf.getvalue()


def write_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Write all rows to ``path`` atomically (temporary file + rename)."""
    return atomic_write_text(path, csv_text(rows))


def read_csv(path: str | os.PathLike) -> list[BenchRow]:
    """Rows of a bench.csv (UserError when the file is missing or is not one)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such CSV file: {str(p)!r}; pass the bench.csv written by `asapbench run`")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "model" not in reader.fieldnames or "ms_median" not in reader.fieldnames:
                raise UserError(f"{str(p)!r} is not an asapbench bench.csv (no 'model'/'ms_median' columns)")
            return [row_from_dict(rec) for rec in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {str(p)!r}: {exc}; pass a bench.csv written by `asapbench run`") from None


# --------------------------------------------------------------------------------------------
# grouping helpers shared by markdown and plot
# --------------------------------------------------------------------------------------------
def _backend_label(r: BenchRow) -> str:
    return r.backend + (" +graph" if r.cuda_graph else "")


def _latest(rows: Iterable[BenchRow]) -> list[BenchRow]:
    """Drop duplicates of the same cell (merged CSVs): the last one wins."""
    seen: dict[tuple, BenchRow] = {}
    for r in rows:
        key = (r.model, r.preset, r.overrides, r.checkpoint, r.backend, r.precision, r.device, r.cuda_graph,
               r.height, r.width, r.batch, r.machine)
        seen.pop(key, None)
        seen[key] = r
    return list(seen.values())


def _resolutions(rows: Iterable[BenchRow]) -> list[tuple[int, int]]:
    return sorted({(r.height, r.width) for r in rows}, key=lambda hw: (hw[0] * hw[1], hw[0]))


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


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
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
        for g in env.get("nvidia_smi") or []:
            lines.append(
                f"  - nvidia-smi: {g.get('name')}, pstate {g.get('pstate')}, SM clock {g.get('clocks.sm')} "
                f"(max {g.get('clocks.max.sm')}), memory clock {g.get('clocks.mem')}, power limit {g.get('power.limit')}"
            )
    return lines


def _envs_from_rows(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    envs: list[dict[str, Any]] = []
    for r in rows:
        e = {k: getattr(r, k) for k in ("cpu_model", "gpu_name", "driver_version", "cuda_version", "torch_version",
                                        "onnxruntime_version", "tensorrt_version", "git_sha")}
        if e not in envs:
            envs.append(e)
    return envs


def markdown(rows: Sequence[BenchRow], envs: Sequence[dict[str, Any]] | None = None, title: str = "asapbench results") -> str:
    """The paper-style report: latency table, ASAP-Net speed-ups, end-to-end, cost, memory, notes."""
    from asapbench.counting import MAC_CONVENTION

    rows = _latest(rows)
    envs = list(envs) if envs else _envs_from_rows(rows)
    res = _resolutions(rows)
    res_cols = [f"{h}x{w}" for h, w in res]
    machines = _ordered(r.machine for r in rows)
    multi_machine = len(machines) > 1

    def where(r: BenchRow) -> str:
        return f"{r.device}: {r.machine}" if multi_machine else r.device

    groups = _ordered((r.model, _backend_label(r), r.precision, where(r)) for r in rows)
    cell: dict[tuple, BenchRow] = {}
    for r in rows:
        cell[(r.model, _backend_label(r), r.precision, where(r), r.height, r.width)] = r

    out = [f"# {title}", ""]
    out.append("Environment:")
    out += _env_lines(envs)
    out += ["", f"MAC counting: {MAC_CONVENTION}. GMACs are per image.", ""]
    batches = sorted({r.batch for r in rows})
    out.append(
        "Times are medians in ms per image (ms per forward call / batch; batch "
        + ", ".join(map(str, batches))
        + "), input already on the device (GPU-only time on CUDA). † marks a coefficient of variation above 5%. "
        "A cell that produced no time shows its status (see Notes)."
    )
    out.append("")

    def latency_table(value, label: str) -> list[str]:
        body = []
        for g in groups:
            cells = []
            for h, w in res:
                r = cell.get((*g, h, w))
                if r is None:
                    cells.append("")
                elif r.status != "ok":
                    cells.append(f"*{r.status}*")
                else:
                    v = value(r)
                    mark = "†" if (label == "latency" and r.cov is not None and r.cov > 0.05) else ""
                    cells.append(_fmt_ms(v) + mark if v is not None else "")
            body.append([g[0], g[1], g[2], g[3], *cells])
        return _md_table(["model", "backend", "precision", "device", *res_cols], body)

    out += ["## Latency (ms per image, median)", ""]
    out += latency_table(lambda r: r.ms_per_image, "latency")
    out += ["", "## ASAP-Net speed-up (baseline median / ASAP-Net median, same backend, precision and device)", ""]
    body = []
    for backend, precision, dev in _ordered((g[1], g[2], g[3]) for g in groups):
        subjects = [g[0] for g in groups if g[1:] == (backend, precision, dev) and is_subject(g[0])]
        baselines = [g[0] for g in groups if g[1:] == (backend, precision, dev) and not is_subject(g[0])]
        for s in subjects:
            for b in baselines:
                cells = []
                for h, w in res:
                    rs = cell.get((s, backend, precision, dev, h, w))
                    rb = cell.get((b, backend, precision, dev, h, w))
                    if rs and rb and rs.status == "ok" and rb.status == "ok" and rs.ms_per_image and rb.ms_per_image:
                        cells.append(_fmt_ratio(rb.ms_per_image / rs.ms_per_image))
                    else:
                        cells.append("")
                body.append([f"{s} vs {b}", backend, precision, dev, *cells])
    if body:
        out += _md_table(["comparison", "backend", "precision", "device", *res_cols], body)
    else:
        out.append("(no ASAP-Net row and baseline row share a backend, precision and device)")
    out += ["", "## End-to-end latency (ms per image, median; host input to host output)", ""]
    out += latency_table(lambda r: r.e2e_ms_per_image, "e2e")

    out += ["", "## Cost (GMACs per image; parameters)", ""]
    body = []
    for m in _ordered(r.model for r in rows):
        mrows = [r for r in rows if r.model == m]
        params = _ordered(r.params for r in mrows if r.params)
        cells = []
        for h, w in res:
            v = next((r.gmacs for r in mrows if (r.height, r.width) == (h, w) and r.gmacs is not None), None)
            cells.append("" if v is None else f"{v:.3g}" if v < 100 else f"{v:.1f}")
        body.append([m, ", ".join(f"{p / 1e6:.2f}M" for p in params), *cells])
    out += _md_table(["model", "params", *res_cols], body)

    out += ["", "## Peak memory (MiB; see mem_kind in bench.csv and results/README.md)", ""]
    out += latency_table(lambda r: r.peak_mem_mb, "mem")

    notes = [r for r in rows if r.status != "ok" or r.note]
    out += ["", "## Notes", ""]
    if notes:
        for r in notes:
            out.append(f"- {r.model} {r.res} {_backend_label(r)} {r.precision} {r.device}: **{r.status}** {r.note}".rstrip())
    else:
        out.append("- every cell ran; no warnings")
    out.append("")
    return "\n".join(out)


def write_markdown(rows: Sequence[BenchRow], path: str | os.PathLike, envs: Sequence[dict[str, Any]] | None = None) -> Path:
    return atomic_write_text(path, markdown(rows, envs))


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------
def json_obj(rows: Sequence[BenchRow], envs: Sequence[dict[str, Any]] | None = None, sources: Sequence[str] = ()) -> dict[str, Any]:
    envs = list(envs) if envs else _envs_from_rows(rows)
    obj: dict[str, Any] = {"schema": SCHEMA}
    obj["environment"] = envs[0] if len(envs) == 1 else None
    obj["environments"] = envs
    if sources:
        obj["sources"] = list(sources)
    obj["columns"] = list(COLUMNS)
    obj["rows"] = [r.as_dict() for r in rows]
    return obj


def write_json(rows: Sequence[BenchRow], path: str | os.PathLike, envs: Sequence[dict[str, Any]] | None = None,
               sources: Sequence[str] = ()) -> Path:
    return atomic_write_json(path, json_obj(rows, envs, sources))


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------
def plot_latency(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Log-log latency (ms per image, median) against megapixels, one line per model x backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in _latest(rows) if r.status == "ok" and r.ms_per_image]
    machines = _ordered(r.machine for r in rows)
    fig, ax = plt.subplots(figsize=(9.0, 5.0), dpi=120)
    models = _ordered(r.model for r in rows)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = _ordered((r.model, _backend_label(r), r.precision, r.device, r.machine) for r in rows)
    variants = _ordered(line[1:] for line in lines)
    for key in lines:
        pts = sorted(((r.megapixels, r.ms_per_image) for r in rows
                      if (r.model, _backend_label(r), r.precision, r.device, r.machine) == key))
        mi, vi = models.index(key[0]), variants.index(key[1:])
        label = f"{key[0]} · {key[1]} {key[2]} ({key[3]}{': ' + key[4] if len(machines) > 1 else ''})"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=styles[vi % len(styles)],
                marker=markers[vi % len(markers)], color=colors[mi % len(colors)], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if rows:
        from matplotlib.ticker import NullFormatter

        ticks: dict[float, list[str]] = {}
        for h, w in _resolutions(rows):
            ticks.setdefault(round(h * w / 1e6, 6), []).append(f"{h}x{w}")
        ax.set_xticks(list(ticks), [f"{' / '.join(v)}\n{k:.3g} MP" for k, v in ticks.items()], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("image size (megapixels, log scale)")
    ax.set_ylabel("latency, ms per image (median)")
    ax.set_title("Latency vs resolution")
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no cell produced a time", ha="center", va="center", transform=ax.transAxes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# all four
# --------------------------------------------------------------------------------------------
def render_all(rows: Sequence[BenchRow], out_dir: str | os.PathLike, envs: Sequence[dict[str, Any]] | None = None,
               sources: Sequence[str] = ()) -> dict[str, Path]:
    """Write bench.csv, bench.md, bench.json and latency_vs_megapixels.png into ``out_dir``."""
    out = Path(out_dir)
    rows = list(rows)
    return {
        "bench.csv": write_csv(rows, out / "bench.csv"),
        "bench.md": write_markdown(rows, out / "bench.md", envs),
        "bench.json": write_json(rows, out / "bench.json", envs, sources),
        "latency_vs_megapixels.png": plot_latency(rows, out / "latency_vs_megapixels.png"),
    }


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
        these = read_csv(p)
        rows += these
        for e in _sibling_envs(p) or _envs_from_rows(these):
            if e not in envs:
                envs.append(e)
    ensure_writable_dir(out_dir, "--out folder")
    return render_all(rows, out_dir, envs, sources=[str(p) for p in csv_paths])
