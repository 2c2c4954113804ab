"""`asapbench run` (resolution sweeps) and `asapbench report` (merge and re-render results).

:func:`build_config` turns command-line values into a validated :class:`SweepConfig` (every bad
value is a :class:`UserError`: one line, exit code 2); :func:`run_benchmark` runs the sweep engine
(:func:`asapbench.bench.sweep.iter_sweep`) and renders its events: a rich progress bar and live
table, warnings, and the four result files (:func:`render_sweep`); :func:`report` merges CSVs. The
Typer commands are thin shells over these.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from asapbench.commands.export import INPUT_HELP, LOWRES_HELP, PIXELWISE_HELP, InputKind
from asapbench.errors import UserError
from asapbench.fsutil import default_cache_dir

DEFAULT_MODELS = ("asapnet", "pix2pixhd", "spade")
DEFAULT_RES = ("256x512",)
DEFAULT_OUT = "bench-out"
DEFAULT_BUDGET_S = 900.0


def _split(values: Iterable[str] | None) -> list[str]:
    """Flatten repeated and comma-separated option values, dropping blanks and duplicates."""
    out: list[str] = []
    for v in values or []:
        for part in str(v).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is a UserError."""
    import torch

    from asapbench.bench.backends import DEVICES

    d = (device or "auto").strip().lower()
    if d not in DEVICES:
        raise UserError(f"unknown --device {device!r}; choose one of: {', '.join(DEVICES)}")
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"--device cuda: {why} (torch {torch.__version__}); use --device cpu or run on a machine with an NVIDIA GPU")
    return d


def _parse_checkpoints(values: Iterable[str] | None, models: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        if "=" not in v:
            raise UserError(f"--checkpoint {v!r}: write MODEL=PATH, e.g. --checkpoint asapnet=runs/asapnet/latest.pth")
        name, path = (s.strip() for s in v.split("=", 1))
        if name not in models:
            raise UserError(f"--checkpoint {v!r}: model {name!r} is not among --models ({', '.join(models)})")
        if not Path(path).exists():
            raise UserError(f"--checkpoint {v!r}: no such file {path!r}")
        from asapbench.checkpoint import resolve_checkpoint_path

        out[name] = str(resolve_checkpoint_path(path))  # a file, or a run folder with latest_net_G.pth
    return out


def _trt_choice(trt: str, backends: list[str]) -> str:
    """``--trt`` checked: the flavour name, or UserError; installed-ness matters only for ``tensorrt`` rows."""
    choice = (getattr(trt, "value", trt) or "auto").lower()
    if choice not in ("auto", "tensorrt", "rtx"):
        raise UserError(f"unknown --trt {trt!r}; choose one of: auto, tensorrt, rtx")
    if choice != "auto" and "tensorrt" in backends:
        from exporters.trt_flavours import resolve_flavour

        resolve_flavour(choice, for_build=False)  # UserError when that flavour is not installed
    return choice


def build_config(
    models: Iterable[str] | None = None,
    res: Iterable[str] | None = None,
    backends: Iterable[str] | None = None,
    precision: Iterable[str] | None = None,
    device: str = "auto",
    batch: int = 1,
    warmup: int | None = None,
    warmup_seconds: float | None = None,
    iters: int | None = None,
    min_seconds: float | None = None,
    e2e_iters: int | None = None,
    budget: float | None = DEFAULT_BUDGET_S,
    checkpoint: Iterable[str] | None = None,
    cuda_graph: bool = False,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    export_check: bool = True,
    trt: str = "auto",
    input: str = "onehot",
    lowres_conv: str | None = None,
    pixelwise: str | None = None,
):
    """Validate command-line values into a SweepConfig (UserError on anything wrong).

    Returns ``(config, checkpoint_paths)``. Loop settings left as None take the device's defaults
    (:func:`asapbench.bench.sweep.cpu_defaults` / ``cuda_defaults``).
    """
    from asapbench.bench.backends import PRECISIONS, default_backends, get_backend
    from asapbench.bench.sweep import SweepConfig, cpu_defaults, cuda_defaults
    from asapbench.bounds import check_all
    from asapbench.registry import get_spec
    from asapbench.resolution import parse_resolutions

    models, res, backends, precision = ([v] if isinstance(v, str) else None if v is None else list(v)
                                        for v in (models, res, backends, precision))
    for option, given in (("--models", models), ("--res", res), ("--backends", backends), ("--precision", precision)):
        if given and not _split(given):  # `--res ""`: not the default silently
            raise UserError(f"{option} is empty; leave it out for the default or name a value (see 'asapbench run --help')")
    check_all(batch=batch, warmup=warmup, warmup_seconds=warmup_seconds, iters=iters, min_seconds=min_seconds,
              e2e_iters=e2e_iters, budget=budget, threads=threads, seed=seed)
    model_names = _split(models) or list(DEFAULT_MODELS)
    for m in model_names:
        get_spec(m)  # UserError listing the choices
    resolutions = parse_resolutions(_split(res) or list(DEFAULT_RES))
    dev = resolve_device(device)
    backend_names = _split(backends)
    for b in backend_names:
        get_backend(b)  # UserError listing the choices
    if not backend_names:
        backend_names = default_backends(dev)
    precisions = _split(precision) or (["fp32", "fp16"] if dev == "cuda" else ["fp32"])
    for p in precisions:
        if p not in PRECISIONS:
            raise UserError(f"unknown --precision {p!r}; choose from: {', '.join(PRECISIONS)}")
    if cuda_graph and dev != "cuda":
        raise UserError("--cuda-graph needs a GPU (--device cuda); CUDA graphs do not exist on the CPU")
    loop = cuda_defaults() if dev == "cuda" else cpu_defaults()
    for name, val in (("warmup", warmup), ("iters", iters), ("e2e_iters", e2e_iters)):
        if val is not None:
            loop[name] = val
    for name, val in (("warmup_seconds", warmup_seconds), ("min_seconds", min_seconds)):
        if val is not None:
            loop[name] = float(val)
    if budget is not None and budget == 0:
        budget = None  # 0: no budget
    ckpts = _parse_checkpoints(checkpoint, model_names)
    from asapbench.commands.export import input_kind
    from asapbench.registry import lowres_conv_choice, pixelwise_choice

    kind = input_kind(input)  # UserError naming the choices
    form = lowres_conv_choice(lowres_conv, model_names)
    pixelwise_impl = pixelwise_choice(pixelwise, model_names)
    cfg = SweepConfig(
        models=model_names, resolutions=resolutions, backends=backend_names, precisions=precisions, device=dev,
        batch=batch, budget_s=budget, checkpoints=ckpts, cuda_graph=cuda_graph, threads=threads,
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), seed=seed, export_check=export_check, trt=_trt_choice(trt, backend_names), input=kind,
        lowres_conv=form, pixelwise=pixelwise_impl, **loop,
    )
    return cfg


def run_benchmark(out: str | os.PathLike = DEFAULT_OUT, progress: bool | None = None, argv: list[str] | None = None,
                  **options: Any):
    """Validate ``options`` (see :func:`build_config`), run the sweep, write the four outputs into ``out``.

    Returns the list of :class:`asapbench.report.BenchRow`. An interrupted sweep (Ctrl-C, SIGTERM)
    writes the finished rows as an incomplete set and raises :class:`SweepInterrupted`.
    """
    from asapbench.fsutil import FolderLock, ensure_writable_dir

    created = not Path(out).exists()
    out_dir = ensure_writable_dir(out, "--out folder")
    try:
        with FolderLock(out_dir, "--out") as lock:  # before any work: a folder in use refuses at once
            cfg = build_config(**options)
            return _run_into(cfg, out_dir, progress, argv, lock)
    except BaseException:
        if created:  # a failed command leaves no empty folder behind
            _remove_if_empty(out_dir)
        raise


def _remove_if_empty(folder: Path) -> None:
    try:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass


def _run_into(cfg, out_dir: Path, progress: bool | None, argv: list[str] | None, lock=None):
    import sys

    import torch

    from asapbench.bench.sweep import config_forms, plan_models
    from asapbench.bench.system import snapshot

    ckpt_models = {}
    if cfg.checkpoints:
        from asapbench.checkpoint import load_generator

        for name, path in cfg.checkpoints.items():
            ckpt_models[name] = load_generator(name, None, path).prepare_for_inference()
    plans = plan_models(cfg.models, cfg.resolutions, ckpt_models, config_forms(cfg))  # bad resolutions fail here, before any work
    env = snapshot(argv)
    if any(b.startswith("onnxruntime") for b in cfg.backends) and env.get("onnxruntime_version"):
        from asapbench.bench.runner_ort import ort_providers

        env["onnxruntime_providers"] = ort_providers()
    env["threads"] = cfg.threads or torch.get_num_threads()
    if cfg.device == "cpu":  # the machine's fp32/bf16 GEMM peak in each backend's own library (docs/timing.md)
        from asapbench.bench.profile import measure_peaks, peak_gemm_size

        env["peaks"] = measure_peaks(cfg.backends, cfg.threads, peak_gemm_size())
    env["loop"] = {k: getattr(cfg, k) for k in ("warmup", "warmup_seconds", "iters", "min_seconds", "e2e_warmup",
                                                  "e2e_iters", "e2e_min_seconds", "budget_s", "batch", "seed")}
    if progress is None:
        progress = sys.stderr.isatty()
    return render_sweep(cfg, out_dir, env=env, progress=progress, checkpoint_models=ckpt_models, plans=plans, lock=lock)


class SweepDisplay:
    """Rich progress bar plus a live table of finished rows (stderr); warnings on stderr either way.

    The bar's line: the cell and its stage, the bar, cells done of all, elapsed time and the forecast
    (the engine's: this cell from the model's own earlier cells scaled by MACs, the sweep from the mean
    cell so far), counting down between events. At a narrow terminal the elapsed time, then the bar,
    are left out and the table drops its least needed columns before any number is cut. Without the
    bar (stderr not a terminal, or ``--no-progress``) every finished cell prints one line.
    """

    #: live-table columns (header, justify) and the order in which a narrow terminal drops them
    COLUMNS = (("model", "left"), ("res", "left"), ("backend", "left"), ("prec", "left"), ("ms median", "right"),
               ("e2e ms", "right"), ("CoV", "right"), ("MiB", "right"), ("status", "left"))
    DROP = ("CoV", "MiB", "e2e ms", "status", "prec")

    def __init__(self, enabled: bool, console=None) -> None:
        self.enabled = enabled
        self.rows: list = []
        self.live = None
        self.total = 0
        self.done = 0
        if not enabled:
            return
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        from asapbench.ui import FitProgress

        self.console = console or Console(stderr=True)
        elapsed, bar = TimeElapsedColumn(), BarColumn(bar_width=30)
        self.progress = FitProgress(SpinnerColumn(), TextColumn("{task.description}", table_column=Column(no_wrap=False)),
                                    bar, MofNCompleteColumn(), elapsed, _eta_column(), drop=(elapsed, bar),
                                    console=self.console)
        self.task = self.progress.add_task("cells", total=None, eta=None)
        self._group = Group
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def _table(self):
        from asapbench.ui import fit_table

        rows = [(r.model, r.res, r.backend + (" +graph" if r.cuda_graph else ""), r.precision,
                 f"{r.ms_median:.2f}" if r.ms_median is not None else "",
                 f"{r.e2e_ms_median:.2f}" if r.e2e_ms_median is not None else "",
                 f"{r.cov:.1%}" if r.cov is not None else "",
                 f"{r.peak_mem_mib:.0f}" if r.peak_mem_mib is not None else "",
                 r.status if r.status == "ok" else f"[red]{r.status}[/red]") for r in self.rows[-15:]]
        return fit_table(self.console, self.COLUMNS, rows, drop=self.DROP, title="finished cells",
                         title_justify="left", show_edge=False, pad_edge=False)

    def _render(self):
        return self._group(self._table(), self.progress) if self.rows else self._group(self.progress)

    def __enter__(self) -> SweepDisplay:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def start(self, total: int) -> None:
        self.total = total
        if self.enabled:
            self.progress.update(self.task, total=total)

    def phase(self, text: str) -> None:
        if self.enabled:
            self.progress.update(self.task, description=text)

    def cell(self, ev) -> None:
        """A cell starts: its label, and the forecast time left for it and for the sweep (counted down)."""
        if self.enabled:
            left = max(1, self.total - ev.index + 1)  # cells left, this one included
            eta = {"t0": self.progress.get_time(), "cell_s": ev.cell_eta_s, "sweep_s": ev.eta_s,
                   "after_s": ev.eta_s * (left - 1) / left if ev.eta_s is not None else None}
            self.progress.update(self.task, eta=eta)
        self.phase(ev.text)

    def reason(self, text: str) -> None:
        """One console line for a cell that produced no time (both with and without the progress bar)."""
        if self.enabled:
            from rich.markup import escape

            self.console.print(f"[red]no time:[/red] {escape(text)}")
        else:
            import sys

            print(f"asapbench: no time: {text}", file=sys.stderr)

    def finished(self, row, eta_s: float | None = None) -> None:
        """A cell is done; ``eta_s``: the engine's forecast for the cells after it. Without the bar an ``ok``
        cell prints one line here (a cell without a time prints its :meth:`reason` line instead)."""
        self.rows.append(row)
        self.done += 1
        if self.enabled:
            self.progress.advance(self.task)
            self.live.update(self._render())
        elif row.status == "ok":
            import sys

            print(f"asapbench: {finished_line(row, self.done, self.total, eta_s)}", file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]warning:[/yellow] {text}")
        else:
            import sys

            print(f"asapbench: warning: {text}", file=sys.stderr)


def finished_line(row, done: int, total: int, eta_s: float | None) -> str:
    """``cell 3/12: asapnet 256x512 torch fp32 cpu: 41.20 ms median (took 9 s; sweep ~2 min left)``."""
    took = f"took {_fmt_s(row.cell_s)}" if row.cell_s is not None else ""
    left = "sweep done" if done >= total else (f"sweep ~{_fmt_s(eta_s)} left" if eta_s is not None else "")
    when = "; ".join(p for p in (took, left) if p)
    return (f"cell {done}/{total}: {row.model} {row.res} {row.backend} {row.precision} {row.device}: "
            f"{row.ms_median:.2f} ms median" + (f" ({when})" if when else ""))


def _eta_text(eta: dict | None, now: float) -> str:
    """The forecast column: ``cell ~20 s, sweep ~5 min left``, counted down from the cell's start; the
    sweep never below the forecast of the cells after this one. Before any forecast: what it waits for."""
    if not eta:
        return ""
    if eta.get("sweep_s") is None:
        return "ETA after the 1st cell"
    spent = max(0.0, now - eta["t0"])
    sweep = max(eta["sweep_s"] - spent, eta["after_s"] or 0.0)
    cell = eta["cell_s"] - spent if eta.get("cell_s") is not None else None
    return (f"cell ~{_fmt_s(cell)}, " if cell is not None and cell >= 1 else "") + f"sweep ~{_fmt_s(sweep)} left"


def _eta_column():
    """The progress column that shows :func:`_eta_text` (rich is imported only when the bar is shown)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        def render(self, task) -> Text:
            text = "" if task.finished else _eta_text(task.fields.get("eta"), task.get_time())
            return Text(text, style="progress.remaining")

    return EtaColumn()


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


#: in-progress rows of a running sweep, in its own folder (asapbench.report.PARTIAL_CSV)
PARTIAL_CSV = "bench.partial.csv"
_SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the sweep is, so that the same path as Ctrl-C writes the files."""


#: the last interruption of this process (Terminated / SweepInterrupted): click turns a KeyboardInterrupt
#: into a plain return value of 130 in non-standalone mode, so ``cli.main`` looks here for what happened
LAST_INTERRUPT: list[BaseException] = []


class SweepInterrupted(KeyboardInterrupt):
    """An interrupted sweep after its rows were written (still a KeyboardInterrupt for library callers);
    ``cli.main`` prints its message and exits ``exit_code`` (130 SIGINT, 143 SIGTERM)."""

    asapbench_exit = True

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoTimes(Exception):
    """A sweep in which no cell produced a time: exit 2 (the reasons were printed one per cell)."""

    asapbench_exit = True
    exit_code = 2


def fix_hint(row, cfg=None) -> str:
    """What to change for a cell that produced no time."""
    note = row.note or ""
    if row.status == "budget":
        now = f" (now {cfg.budget_s:g} s)" if cfg is not None and cfg.budget_s else ""
        return "" if "--budget" in note else f"; raise --budget{now}, 0 for none, or lower --iters/--min-seconds"
    if row.status == "unsupported":
        return "" if "--" in note else "; leave it out of --backends/--precision"
    if row.status == "error":
        return "" if "--precision" in note else "; see bench.md Notes (rerun this cell alone with --models/--backends to debug)"
    if row.status == "oom":
        return "" if "--" in note else "; choose a smaller --res or --batch"
    return ""


def reason_line(row, cfg=None) -> str:
    return (f"{row.model} {row.res} {row.backend} {row.precision} {row.device}: {row.status}: "
            f"{row.note}{fix_hint(row, cfg)}")


def _sigterm_raises():
    """Context: SIGTERM raises :class:`Terminated` (main thread only); the old handler is restored after."""
    import contextlib
    import signal
    import threading

    @contextlib.contextmanager
    def cm():
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            LAST_INTERRUPT.append(Terminated())
            raise LAST_INTERRUPT[-1]

        old = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old)

    return cm()


def render_sweep(cfg, out_dir: str | os.PathLike, env: dict[str, Any] | None = None, progress: bool = True,
                 checkpoint_models: dict | None = None, plans: list | None = None, lock=None) -> list:
    """Run the sweep engine and render its events into a fresh folder ``OUT/run-<time>`` of ``out_dir``,
    which it locks for the run (``lock``: a :class:`asapbench.fsutil.FolderLock` the caller already holds on it).

    Finished rows go to that folder's bench.partial.csv after every cell; at the end the four result files
    (bench.csv, bench.md, bench.json, plot) are written there and one rename switches ``OUT/latest`` to it
    (``OUT/bench.csv`` and the others are links to ``latest/...``): every earlier set keeps its folder, and
    a reader sees the earlier set or this one, never a mix. The rows of an earlier run that was killed
    (kill -9) are kept in its folder, renamed ``...-killed``, with a warning. On Ctrl-C or SIGTERM the
    finished rows are written as a set marked incomplete and :class:`SweepInterrupted` is raised (exit
    130 / 143); a sweep without a single time raises :class:`NoTimes` after writing its files.
    """
    from asapbench.bench.sweep import iter_sweep
    from asapbench.bench.system import snapshot
    from asapbench.fsutil import DiskFull, FolderLock, atomic_write_text, clean_stale_tmp
    from asapbench.report import csv_text, keep_killed_partials, new_set_dir, publish_set, render_all

    out_dir = Path(out_dir)
    env = env if env is not None else snapshot()
    rows: list = []
    total = 0
    display = SweepDisplay(progress)
    own_lock = lock is None
    if own_lock:
        lock = FolderLock(out_dir, "--out").acquire()
    run_dir: Path | None = None

    def publish(state: dict[str, Any]) -> None:
        render_all(rows, run_dir, [env], run_state=state)
        _unlink(run_dir / PARTIAL_CSV)
        moved = publish_set(out_dir, run_dir)
        if moved is not None:
            display.warn(f"moved the result files an older asapbench wrote directly into {out_dir} to {moved}")

    from asapbench.bench.backends import BACKENDS

    cache_lock = None
    if any("runner_torch" not in BACKENDS[b].runner for b in cfg.backends if b in BACKENDS):
        from exporters.cache import use_cache  # a torch-only sweep neither needs exporters/ nor touches the cache

        # marks the cache and holds its shared lock: `cache --clear` refuses while this run uses it
        cache_lock = use_cache(cfg.cache_dir)
    try:
        if lock.stale:
            display.warn(f"took over the lock of an earlier run that no longer exists (pid {lock.stale.get('pid')})")
        for kept in keep_killed_partials(out_dir):
            display.warn(f"an earlier run into {out_dir} was killed before it finished; kept its finished rows in "
                         f"{kept} (`asapbench report {kept.parent}` renders them)")
        for folder in (out_dir, Path(cfg.cache_dir) / "onnx", Path(cfg.cache_dir) / "engines"):
            for f in clean_stale_tmp(folder):
                display.warn(f"removed a stale temporary file {f} (left by a killed run)")
        run_dir = new_set_dir(out_dir, "run")
        try:
            with _sigterm_raises(), display:
                for ev in iter_sweep(cfg, env=env, checkpoint_models=checkpoint_models, on_phase=display.phase,
                                     plans=plans):
                    if ev.kind == "start":
                        total = ev.total
                        display.start(ev.total)
                    elif ev.kind == "cell":
                        display.cell(ev)
                    elif ev.kind == "row":
                        rows.append(ev.row)
                        atomic_write_text(run_dir / PARTIAL_CSV, csv_text(rows))
                        display.finished(ev.row, ev.eta_s)
                        if ev.row.status != "ok":
                            display.reason(reason_line(ev.row, cfg))
                    elif ev.kind == "warning":
                        display.warn(ev.text)
                display.phase("done")
        except KeyboardInterrupt as exc:
            sig = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            with _sigterm_raises():  # a second signal while writing must not leave a half-written set
                state = {"complete": False, "reason": f"interrupted ({sig})", "cells_done": len(rows), "cells_total": total}
                if rows:
                    publish(state)
                    kept = f"kept {len(rows)} row(s) in {run_dir} (marked incomplete; {out_dir / 'latest'} names it)"
                else:
                    kept = f"no row finished; {out_dir} is unchanged"
            stop = SweepInterrupted(f"interrupted ({sig}) after {len(rows)} of {total} cells; {kept}", _SIGNAL_EXIT[sig])
            LAST_INTERRUPT.append(stop)
            raise stop from None
        except Exception as exc:
            if isinstance(exc, DiskFull) and (run_dir / PARTIAL_CSV).is_file():
                raise UserError(f"{exc}; the finished rows are in {run_dir / PARTIAL_CSV}") from None
            if rows and not isinstance(exc, DiskFull):  # keep what finished, marked incomplete
                state = {"complete": False, "reason": f"stopped by an error ({type(exc).__name__})",
                         "cells_done": len(rows), "cells_total": total}
                publish(state)
            raise
        try:
            publish({"complete": True, "cells_done": len(rows), "cells_total": total})
        except DiskFull as exc:
            raise UserError(f"{exc}; the finished rows are in {run_dir / PARTIAL_CSV}") from None
    finally:
        if run_dir is not None:
            _remove_if_empty(run_dir)
        if own_lock:
            lock.release()
        if cache_lock is not None:
            cache_lock.release()
    return rows


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def report(csvs: Iterable[str | os.PathLike], out: str | os.PathLike):
    """Merge bench.csv files and render bench.csv/md/json/png into ``out``; returns the written paths and one
    line per cell that a later file replaced."""
    from asapbench.report import merge_report

    return merge_report(list(csvs), out)


def _latest_set(out: str | os.PathLike) -> Path:
    """The set folder ``OUT/latest`` names."""
    link = Path(out) / "latest"
    return Path(out) / os.readlink(link) if link.is_symlink() else Path(out)


def no_time_summary(rows, out) -> str:
    from collections import Counter

    c = Counter(r.status for r in rows)
    what = ", ".join(f"{n} {s}" for s, n in c.items()) or "no cells"
    return (f"no cell produced a time ({what}; reasons above, one line per cell); wrote the rows to {out}; "
            "change the options those lines name")


def _summary(rows) -> str:
    from collections import Counter

    c = Counter(r.status for r in rows)
    return ", ".join(f"{n} {s}" for s, n in c.items()) or "no cells"


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        models: Annotated[Optional[list[str]], typer.Option("--models", "-m", metavar="NAMES", help="Models, comma-separated or repeated (default: asapnet, pix2pixhd, spade; see `asapbench models --tiny`).")] = None,
        res: Annotated[Optional[list[str]], typer.Option("--res", "-r", metavar="RES", help="Resolution HxW or N (NxN); repeatable; 'paper' = 256x512, 512x512, 512x1024, 1024x1024, 1024x2048, 2048x2048 (default 256x512).")] = None,
        backends: Annotated[Optional[list[str]], typer.Option("--backends", "-b", metavar="NAMES", help="torch, torch-compile, onnxruntime, onnxruntime-trt, tensorrt, openvino (default: every one available on the device but torch-compile and openvino).")] = None,
        precision: Annotated[Optional[list[str]], typer.Option("--precision", "-p", metavar="NAMES", help="fp32, fp16 and/or bf16 (default: fp32 on the CPU, fp32,fp16 on CUDA). fp16: CUDA only. bf16: CPU only, torch, torch-compile and openvino, on CPUs with AVX-512 BF16 or AMX (else an 'unsupported' row); each bf16 cell must first match fp32 torch (PSNR >= 40 dB, no NaN/Inf) or it is an 'error' row, not a time.")] = None,
        device: Annotated[str, typer.Option("--device", "-d", metavar="NAME", help="auto, cpu or cuda.")] = "auto",
        batch: Annotated[int, typer.Option("--batch", metavar="N", help="Images per forward call.")] = 1,
        warmup: Annotated[Optional[int], typer.Option("--warmup", metavar="N", rich_help_panel="Timing loop", help="Warm-up runs, at least (default: 2 on CPU, 10 on CUDA).")] = None,
        warmup_seconds: Annotated[Optional[float], typer.Option("--warmup-seconds", metavar="S", rich_help_panel="Timing loop", help="Warm-up seconds, at least (default: 0 on CPU, 1 on CUDA).")] = None,
        iters: Annotated[Optional[int], typer.Option("--iters", "-n", metavar="N", rich_help_panel="Timing loop", help="Timed runs, at least (default: 10 on CPU, 50 on CUDA).")] = None,
        min_seconds: Annotated[Optional[float], typer.Option("--min-seconds", metavar="S", rich_help_panel="Timing loop", help="Timed seconds, at least (default: 3 on CPU and CUDA).")] = None,
        e2e_iters: Annotated[Optional[int], typer.Option("--e2e-iters", metavar="N", rich_help_panel="Timing loop", help="End-to-end runs (host to host), 0 to skip (default: 5 on CPU, 20 on CUDA).")] = None,
        budget: Annotated[float, typer.Option("--budget", metavar="S", rich_help_panel="Timing loop", help="Per-cell seconds for warm-up, timed and end-to-end runs; a cell over it gets status 'budget' (0: none).")] = DEFAULT_BUDGET_S,
        checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", metavar="M=PATH", help="MODEL=PATH: time these weights (their configuration is kept at every resolution).")] = None,
        cuda_graph: Annotated[bool, typer.Option("--cuda-graph", metavar="", rich_help_panel="Timing loop", help="Replay a captured CUDA graph (torch, onnxruntime CUDA, TensorRT).")] = False,
        threads: Annotated[Optional[int], typer.Option("--threads", metavar="N", rich_help_panel="Timing loop", help="CPU threads for torch and onnxruntime (default: torch's).")] = None,
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", metavar="DIR", rich_help_panel="Output", help="ONNX/engine cache (default $ASAPBENCH_CACHE or ~/.cache/asapbench).")] = None,
        seed: Annotated[int, typer.Option("--seed", metavar="N", rich_help_panel="Timing loop", help="Seed for weights and the synthetic label map.")] = 0,
        export_check: Annotated[bool, typer.Option("--export-check/--no-export-check", metavar="", rich_help_panel="Output", help="Compare each new ONNX export with PyTorch before timing it.")] = True,
        trt: Annotated[str, typer.Option("--trt", metavar="NAME", help="TensorRT flavour for --backends tensorrt: auto (whichever is installed), tensorrt (enterprise) or rtx (TensorRT for RTX).")] = "auto",
        input: Annotated[InputKind, typer.Option("--input", metavar="KIND", help=INPUT_HELP)] = InputKind.onehot,
        lowres_conv: Annotated[Optional[str], typer.Option("--lowres-conv", metavar="FORM", help=LOWRES_HELP)] = None,
        pixelwise: Annotated[Optional[str], typer.Option("--pixelwise", metavar="IMPL", help=PIXELWISE_HELP)] = None,
        out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", rich_help_panel="Output", help="Output folder: each run writes bench.csv, bench.md, bench.json and latency_vs_megapixels.png to a new folder OUT/run-<time> and points OUT/latest (and OUT/bench.csv etc.) at it; earlier runs are kept.")] = Path(DEFAULT_OUT),
        progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", metavar="", rich_help_panel="Output", help="Progress bar and live table (default: when stderr is a terminal).")] = None,
    ) -> None:
        """Time models x resolutions x backends x precisions; write CSV, markdown, JSON and a plot."""
        rows = run_benchmark(
            out=out, progress=progress, models=models, res=res, backends=backends, precision=precision,
            device=device, batch=batch, warmup=warmup, warmup_seconds=warmup_seconds, iters=iters,
            min_seconds=min_seconds, e2e_iters=e2e_iters, budget=budget, checkpoint=checkpoint, cuda_graph=cuda_graph,
            threads=threads, cache_dir=cache_dir, seed=seed, export_check=export_check, trt=trt, input=input, lowres_conv=lowres_conv, pixelwise=pixelwise,
        )
        if not any(r.status == "ok" for r in rows):
            raise NoTimes(no_time_summary(rows, out))
        typer.echo(f"{_summary(rows)}; wrote bench.csv, bench.md, bench.json, latency_vs_megapixels.png to "
                   f"{_latest_set(out)} ({Path(out) / 'latest'} names it)")

    @app.command("report")
    def report_cmd(
        csvs: Annotated[list[Path], typer.Argument(help="bench.csv files written by `asapbench run`, or the folders holding them.")],
        out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", rich_help_panel="Output", help="Output folder: the merged set goes to a new folder OUT/report-<time> that OUT/latest then names (earlier sets are kept).")] = Path(DEFAULT_OUT) / "report",
    ) -> None:
        """Merge bench.csv files and render bench.csv, bench.md, bench.json and the plot again (incomplete if any input is)."""
        paths, replaced = report(csvs, out)
        for line in replaced:
            typer.echo(f"replaced: {line}", err=True)
        typer.echo(f"wrote {', '.join(paths)} to {_latest_set(out)} ({Path(out) / 'latest'} names it)" + (f"; {len(replaced)} cell(s) taken from a later file (listed above)" if replaced else ""))
