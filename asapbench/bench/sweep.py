"""The sweep: every model x resolution x backend x precision cell, timed, one :class:`BenchRow` each.

A cell that runs out of memory, cannot run here, exceeds its time budget or fails becomes a row
with status ``oom``, ``unsupported``, ``budget`` or ``error`` and a note; the sweep goes on. After
every cell bench.csv is rewritten (atomically), so Ctrl-C keeps every finished row; the other three
outputs are rendered from the finished rows on the way out.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from asapbench.bench import backends as B
from asapbench.bench.timing import COV_WARN, BudgetExceeded, CudaEventTimer, MemoryProbe, cpu_timer, run_loop, synced_wall_timer
from asapbench.errors import MissingDependency, UserError
from asapbench.report import BenchRow, render_all, write_csv


@dataclass
class SweepConfig:
    """Everything ``asapbench run`` decides before the first cell (validated by the CLI layer)."""

    models: list[str]
    resolutions: list[tuple[int, int]]
    backends: list[str]
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    device: str = "cpu"
    batch: int = 1
    warmup: int = 1
    warmup_seconds: float = 0.0
    iters: int = 3
    min_seconds: float = 0.0
    e2e_warmup: int = 0
    e2e_iters: int = 2
    e2e_min_seconds: float = 0.0
    budget_s: float | None = None  # per cell: warm-up + timed + end-to-end runs
    checkpoints: dict[str, str] = field(default_factory=dict)
    cuda_graph: bool = False
    threads: int | None = None
    cache_dir: Path = Path("bench-out/cache")
    seed: int = 0
    export_check: bool = True


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
@dataclass
class ModelPlan:
    """How one model is built at one resolution (or why it cannot be)."""

    name: str
    height: int
    width: int
    preset: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    problem: str = ""  # non-empty: the model cannot take this resolution


def _fmt_overrides(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))


def plan_models(models: Sequence[str], resolutions: Sequence[tuple[int, int]],
                checkpoints: dict[str, torch.nn.Module] | None = None) -> list[ModelPlan]:
    """Configure every model for every resolution as the paper did, checking that it can take it.

    Models are built on the meta device (no weights), so planning costs milliseconds. A resolution
    that none of the models can take raises UserError; one that only some cannot take becomes a
    plan with ``problem`` set (an ``unsupported`` row).
    """
    from asapbench.registry import configure_for_resolution, create_generator, get_preset

    checkpoints = checkpoints or {}
    plans: list[ModelPlan] = []
    for h, w in resolutions:
        batch: list[ModelPlan] = []
        for name in models:
            p = ModelPlan(name, h, w)
            try:
                if name in checkpoints:
                    m = checkpoints[name]
                    preset_kw = get_preset(name, m.preset).kwargs
                    p.preset = m.preset
                    p.overrides = {k: v for k, v in getattr(m, "config", {}).items() if preset_kw.get(k) != v}
                    p.checkpoint = str(getattr(m, "checkpoint_path", ""))
                    m.check_input_size(h, w)
                else:
                    p.preset, p.overrides = configure_for_resolution(name, h, w)
                    with torch.device("meta"):
                        m = create_generator(name, p.preset, **p.overrides)
                    m.check_input_size(h, w)
            except UserError as exc:
                p.problem = str(exc)
            batch.append(p)
        if all(p.problem for p in batch):
            raise UserError(f"no requested model can take --res {h}x{w}: {batch[0].problem}; choose another --res "
                            "(e.g. 256x512; `asapbench info MODEL --res HxW` checks one)")
        plans += batch
    # order: model-major, then resolution (keeps one model in memory at a time)
    order = {n: i for i, n in enumerate(models)}
    res_order = {r: i for i, r in enumerate(resolutions)}
    plans.sort(key=lambda p: (order[p.name], res_order[(p.height, p.width)]))
    return plans


class _ModelCache:
    """The CPU fp32 generator for a plan; rebuilt only when the configuration changes."""

    def __init__(self, checkpoints: dict[str, torch.nn.Module], seed: int) -> None:
        self.checkpoints = checkpoints
        self.seed = seed
        self.key: tuple | None = None
        self.model: torch.nn.Module | None = None

    def get(self, plan: ModelPlan) -> torch.nn.Module:
        from asapbench.registry import create_generator

        if plan.name in self.checkpoints:
            return self.checkpoints[plan.name]
        key = (plan.name, plan.preset, tuple(sorted(plan.overrides.items())))
        if key != self.key:
            self.model = None
            self.key = None
            torch.manual_seed(self.seed)  # same weights every run: ONNX exports can be reused
            model = create_generator(plan.name, plan.preset, **plan.overrides).prepare_for_inference()
            spread_weights(model, plan.height, plan.width, self.seed)
            self.model, self.key = model, key
        assert self.model is not None
        return self.model


def spread_weights(model: torch.nn.Module, height: int, width: int, seed: int) -> None:
    """Make random weights produce a realistic output (BatchNorm statistics from data, tanh not saturated).

    Default initialisation saturates most of these generators (and drives a random SPADE's
    activations to ~1e16), which makes the exports' parity check meaningless and fp16 overflow. The
    cost per run does not depend on the values.
    """
    from exporters.validate import spread_for_resolution

    spread_for_resolution(model, height, width, seed, steps=4)


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------
_OOM_MARKERS = (
    "out of memory", "outofmemory", "cuda_error_out_of_memory", "failed to allocate memory",
    "not enough memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "std::bad_alloc",
)


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(status, note) for an exception raised by a cell."""
    if isinstance(exc, B.Unsupported):
        return "unsupported", str(exc)
    if isinstance(exc, BudgetExceeded):
        return "budget", str(exc)
    if isinstance(exc, MissingDependency) or type(exc).__name__ == "ProviderUnavailable":
        return "unsupported", str(exc)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) or getattr(torch.cuda, "OutOfMemoryError", ()) and isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom", f"{type(exc).__name__}: {msg}"[:300]
    low = str(exc).lower()
    if any(m in low for m in _OOM_MARKERS):
        return "oom", f"{type(exc).__name__}: {msg}"[:300]
    return "error", f"{type(exc).__name__}: {msg}"[:300]


def _free_device() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# one cell
# --------------------------------------------------------------------------------------------
class _Rates:
    """Best GMAC/s seen per (backend, precision, device): predicts whether a cell fits its budget."""

    def __init__(self) -> None:
        self.best: dict[tuple, float] = {}

    def add(self, key: tuple, gmacs: float | None, ms: float | None) -> None:
        if gmacs and ms:
            self.best[key] = max(self.best.get(key, 0.0), gmacs / (ms / 1e3))

    def predict_s(self, key: tuple, gmacs: float | None) -> float | None:
        rate = self.best.get(key)
        return gmacs / rate if (rate and gmacs) else None


def measure_cell(row: BenchRow, cell: B.Cell, cfg: SweepConfig, on_phase: Callable[[str], None] | None = None) -> BenchRow:
    """Prepare, load, warm up and time one cell, filling ``row`` (exceptions propagate to the caller)."""
    say = on_phase or (lambda s: None)
    say("exporting" if cell.backend != "torch" else "loading")
    prepared = B.prepare(cell)
    probe = None
    runner = None
    try:
        mem_kind = "cpu" if cell.device == "cpu" else ("cuda_torch" if cell.backend.startswith("torch") else "cuda_device")
        probe = MemoryProbe(mem_kind).start()
        say("loading")
        runner = B.open_runner(cell, prepared)
        deadline = (time.perf_counter() + cfg.budget_s) if cfg.budget_s else None
        timer = CudaEventTimer() if cell.device == "cuda" else cpu_timer

        def progress(phase: str, i: int) -> None:
            say(f"{phase} {i}")

        loop = run_loop(runner.run, timer, warmup=cfg.warmup, warmup_seconds=cfg.warmup_seconds,
                        iters=cfg.iters, min_seconds=cfg.min_seconds, deadline=deadline, on_run=progress)
        probe.sample()
        st = loop.stats
        assert st is not None
        row.ms_median, row.ms_mean, row.ms_p90, row.ms_p99 = st.median, st.mean, st.p90, st.p99
        row.ms_min, row.ms_max, row.ms_std, row.cov = st.min, st.max, st.std, st.cov
        row.iters, row.warmup_iters, row.timed_s = st.n, loop.warmup_runs, loop.timed_s
        row.img_per_s = cell.batch * 1e3 / st.mean if st.mean > 0 else None
        if cfg.e2e_iters > 0:
            sync = torch.cuda.synchronize if cell.device == "cuda" else None
            e2e = run_loop(runner.run_e2e, synced_wall_timer(sync), warmup=cfg.e2e_warmup, warmup_seconds=0.0,
                           iters=cfg.e2e_iters, min_seconds=cfg.e2e_min_seconds, deadline=deadline,
                           on_run=lambda p, i: say(f"end-to-end {i}"))
            assert e2e.stats is not None
            row.e2e_ms_median, row.e2e_ms_mean, row.e2e_iters = e2e.stats.median, e2e.stats.mean, e2e.stats.n
        probe.sample()
        row.peak_mem_mb = probe.peak_mb()
        row.mem_kind = probe.mem_kind
        row.provider = runner.provider
        row.threads = runner.threads
        notes = [runner.note] if runner.note else []
        if st.cov > COV_WARN:
            notes.insert(0, f"CoV {st.cov:.1%} > {COV_WARN:.0%}: noisy timing")
        if row.peak_mem_mb is None and probe.mem_kind == "ru_maxrss_delta":
            notes.append("peak RSS hidden by an earlier, larger peak (clear_refs unavailable)")
        row.note = "; ".join(notes)
        row.status = "ok"
        return row
    finally:
        if runner is not None:
            try:
                runner.close()
            except Exception:  # noqa: BLE001 - closing must not hide the cell's own result
                pass
        del runner, prepared
        _free_device()


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------
class _Display:
    """Rich progress bar plus a live table of finished rows (stderr); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.rows: list[BenchRow] = []
        self.live = None
        if not enabled:
            return
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
        self.task = self.progress.add_task("cells", total=total)
        self._group = Group
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def _table(self):
        from rich.table import Table

        t = Table(title="finished cells", title_justify="left", show_edge=False, pad_edge=False)
        for c in ("model", "res", "backend", "prec", "ms median", "e2e ms", "CoV", "MiB", "status"):
            t.add_column(c, justify="right" if c in ("ms median", "e2e ms", "CoV", "MiB") else "left")
        for r in self.rows[-15:]:
            t.add_row(r.model, r.res, r.backend + (" +graph" if r.cuda_graph else ""), r.precision,
                      f"{r.ms_median:.2f}" if r.ms_median is not None else "",
                      f"{r.e2e_ms_median:.2f}" if r.e2e_ms_median is not None else "",
                      f"{r.cov:.1%}" if r.cov is not None else "",
                      f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "",
                      r.status if r.status == "ok" else f"[red]{r.status}[/red]")
        return t

    def _render(self):
        return self._group(self._table(), self.progress) if self.rows else self._group(self.progress)

    def __enter__(self) -> "_Display":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def phase(self, text: str) -> None:
        if self.enabled:
            self.progress.update(self.task, description=text)

    def finished(self, row: BenchRow) -> None:
        self.rows.append(row)
        if self.enabled:
            self.progress.advance(self.task)
            self.live.update(self._render())

    def warn(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]warning:[/yellow] {text}")
        else:
            import sys

            print(f"asapbench: warning: {text}", file=sys.stderr)


def _env_columns(env: dict[str, Any]) -> dict[str, str]:
    from asapbench.bench.system import ROW_ENV_KEYS

    out = {k: ("" if env.get(k) is None else str(env.get(k))) for k in ROW_ENV_KEYS}
    out["timestamp"] = str(env.get("timestamp") or "")
    return out


def run_sweep(
    cfg: SweepConfig,
    out_dir: str | Path,
    env: dict[str, Any] | None = None,
    progress: bool = True,
    checkpoint_models: dict[str, torch.nn.Module] | None = None,
) -> list[BenchRow]:
    """Run every cell of ``cfg`` and write bench.csv after each; all four outputs at the end.

    On KeyboardInterrupt the finished rows are rendered to all four outputs before re-raising.
    """
    from asapbench.bench.system import snapshot
    from asapbench.counting import count_macs

    out_dir = Path(out_dir)
    env = env if env is not None else snapshot()
    env_cols = _env_columns(env)
    ckpts = checkpoint_models or {}
    plans = plan_models(cfg.models, cfg.resolutions, ckpts)
    n_cells = len(plans) * len(cfg.backends) * len(cfg.precisions)
    rows: list[BenchRow] = []
    rates = _Rates()
    cache = _ModelCache(ckpts, cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = cfg.threads or torch.get_num_threads()
    display = _Display(progress, n_cells)

    def finish(row: BenchRow) -> None:
        rows.append(row)
        write_csv(rows, out_dir / "bench.csv")
        display.finished(row)
        if row.status == "ok" and row.cov is not None and row.cov > COV_WARN:
            display.warn(f"{row.model} {row.res} {row.backend} {row.precision}: CoV {row.cov:.1%} > {COV_WARN:.0%}; "
                         "the machine was busy or clocks varied: rerun with more --iters/--min-seconds")

    try:
        with display:
            for plan in plans:
                model = None
                cost: dict[str, Any] | None = None
                for backend in cfg.backends:
                    for precision in cfg.precisions:
                        t_cell = time.perf_counter()
                        row = BenchRow(model=plan.name, preset=plan.preset, overrides=_fmt_overrides(plan.overrides),
                                       checkpoint=plan.checkpoint, backend=backend, precision=precision,
                                       device=cfg.device, cuda_graph=cfg.cuda_graph, height=plan.height,
                                       width=plan.width, batch=cfg.batch, threads=threads, **env_cols)
                        label = f"{plan.name} {plan.height}x{plan.width} {backend} {precision}"
                        display.phase(label)
                        try:
                            if plan.problem:
                                raise B.Unsupported(plan.problem)
                            reason = B.unsupported_reason(backend, cfg.device, precision, cfg.cuda_graph)
                            if reason:
                                raise B.Unsupported(reason)
                            if model is None:
                                display.phase(f"{label}: building")
                                model = cache.get(plan)
                                cost = count_macs(model, plan.height, plan.width, batch=1)
                            assert cost is not None
                            row.params, row.macs = int(cost["params"]), int(cost["macs"])
                            row.gmacs = row.macs / 1e9
                            key = (backend, precision, cfg.device)
                            pred = rates.predict_s(key, row.gmacs * cfg.batch)
                            runs = cfg.warmup + cfg.iters + cfg.e2e_warmup + cfg.e2e_iters
                            if cfg.budget_s and pred is not None and pred * runs > cfg.budget_s:
                                raise BudgetExceeded(
                                    f"predicted {pred:.3g} s per run (from the fastest GMAC/s of earlier cells on this "
                                    f"backend): {runs} runs would exceed the {cfg.budget_s:g} s budget; not run")
                            cell = B.Cell(model=model, x=_input(model, cfg, plan), height=plan.height, width=plan.width,
                                          batch=cfg.batch, backend=backend, precision=precision, device=cfg.device,
                                          cuda_graph=cfg.cuda_graph, threads=threads, cache_dir=cfg.cache_dir,
                                          seed=cfg.seed, export_check=cfg.export_check,
                                          progress=lambda s: display.phase(f"{label}: {s}"))
                            measure_cell(row, cell, cfg, on_phase=cell.progress)
                            rates.add(key, row.gmacs * cfg.batch, row.ms_min)
                        except KeyboardInterrupt:
                            raise
                        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                            row.status, row.note = classify_failure(exc)
                            if row.status == "error":
                                tb = traceback.extract_tb(exc.__traceback__)
                                if tb:
                                    row.note += f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})"
                            _free_device()
                        row.cell_s = time.perf_counter() - t_cell
                        finish(row)
                del model
                _free_device()
            display.phase("done")
    except KeyboardInterrupt:
        if rows:
            render_all(rows, out_dir, [env])
        raise
    render_all(rows, out_dir, [env])
    return rows


def _input(model: torch.nn.Module, cfg: SweepConfig, plan: ModelPlan) -> torch.Tensor:
    from asapbench.inputs import example_input

    return example_input(model, cfg.batch, plan.height, plan.width, seed=cfg.seed)


def cpu_defaults() -> dict[str, Any]:
    """Loop settings for a CPU run (chosen so `asapbench run` finishes in < 5 min on 2 cores)."""
    return dict(warmup=2, warmup_seconds=0.0, iters=3, min_seconds=1.0, e2e_warmup=0, e2e_iters=1, e2e_min_seconds=0.0)


def cuda_defaults() -> dict[str, Any]:
    """Loop settings for a GPU run (in the spirit of trtexec / optimum-benchmark)."""
    return dict(warmup=10, warmup_seconds=1.0, iters=50, min_seconds=3.0, e2e_warmup=3, e2e_iters=20, e2e_min_seconds=1.0)

