"""The sweep engine: every model x resolution x backend x precision cell, timed, one :class:`BenchRow` each.

:func:`plan_models` configures every model for every resolution on the meta device (no weights:
the size check and the MAC count happen here, once); :func:`iter_sweep` then builds each model once
with real weights and yields events (:class:`SweepEvent`: a cell starts, a row is finished, a
warning) that the command renders (console, progress bar, files). A cell that runs out of memory, cannot run
here, exceeds its time budget or fails becomes a row with status ``oom``, ``unsupported``,
``budget`` or ``error`` and a note; the sweep goes on. See docs/timing.md.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asapbench.bench import backends as B
from asapbench.bench.timing import (
    COV_WARN,
    BudgetExceeded,
    CudaEventTimer,
    MemoryProbe,
    cpu_timer,
    run_loop,
    synced_wall_timer,
    tail_percentiles,
)
from asapbench.errors import MissingDependency, UserError
from asapbench.record import BenchRow


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
    trt: str = "auto"  # TensorRT flavour for the tensorrt backend: auto, tensorrt or rtx
    input: str = "onehot"  # what the models take: onehot (official float tensor) or labels (int32 label map)
    lowres_conv: str | None = None  # ASAP-Net's low-res 3x3 conv form (None: the model's default); a row override
    pixelwise: str | None = None  # ASAP-Net's pixelwise formulation (None: the model's default); a row override


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
@dataclass
class ModelPlan:
    """How one model is built at one resolution (or why it cannot be), and what it costs."""

    name: str
    height: int
    width: int
    preset: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    problem: str = ""  # non-empty: the model cannot take this resolution
    cost: dict[str, Any] | None = None  # asapbench.counting.count_macs at batch 1
    input_nc: int | None = None
    memory: Any = None  # asapbench.bench.memory.MemoryEstimate at batch 1, fp32 (None: unknown)

    @property
    def key(self) -> tuple:
        """Plans with the same key share one built model."""
        return (self.name, self.preset, tuple(sorted(self.overrides.items())), self.checkpoint)


def _fmt_overrides(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))


#: ASAP-Net's inference forms that `run` sets: (SweepConfig field, model attribute); the same weights either way
FORMS = (("lowres_conv", "lowres_conv"), ("pixelwise", "pixelwise_impl"))


def _plan_one(name: str, h: int, w: int, checkpoints: dict[str, torch.nn.Module],
              forms: dict[str, str] | None = None) -> ModelPlan:
    from asapbench.counting import count_macs
    from asapbench.registry import build_for_resolution, get_preset

    p = ModelPlan(name, h, w)
    try:
        if name in checkpoints:  # the checkpoint's configuration at every size: what differs from its preset
            m = checkpoints[name]
            m.check_input_size(h, w)
            preset_kw = get_preset(name, m.preset).kwargs
            p.overrides = {k: v for k, v in m.config.items() if preset_kw.get(k) != v}
            p.checkpoint = str(m.checkpoint_path or "")
        else:
            m = build_for_resolution(name, h, w, device="meta")
            p.overrides = dict(m.overrides)
        for attr, value in (forms or {}).items():  # set on the built (or checkpoint's) model; named in the row
            if hasattr(m, attr) and value != getattr(m, attr):
                p.overrides[attr] = value
        p.preset = m.preset
        p.input_nc = getattr(m, "input_nc", None)
        p.cost = count_macs(m, h, w, batch=1)
    except UserError as exc:
        p.problem = str(exc)
        return p
    try:
        from asapbench.bench.memory import estimate

        p.memory = estimate(m, 1, h, w)
    except Exception:  # noqa: BLE001 - an estimate that cannot be made blocks nothing
        p.memory = None
    return p


def plan_models(models: Sequence[str], resolutions: Sequence[tuple[int, int]],
                checkpoints: dict[str, torch.nn.Module] | None = None,
                forms: dict[str, str] | None = None) -> list[ModelPlan]:
    """Configure every model for every resolution as the paper did, check the size and count its MACs.

    Models are built on the meta device (no weights), so planning costs milliseconds. A resolution
    that none of the models can take raises UserError; one that only some cannot take becomes a
    plan with ``problem`` set (an ``unsupported`` row). Plans are ordered model-major, then by
    resolution (one model in memory at a time). ``forms``: model attribute -> value (ASAP-Net's ``lowres_conv`` and
    ``pixelwise_impl``) for the models that have it, an override in their plans (:func:`build_model` applies it).
    """
    checkpoints = checkpoints or {}
    plans: list[ModelPlan] = []
    for h, w in resolutions:
        batch = [_plan_one(name, h, w, checkpoints, forms) for name in models]
        if all(p.problem for p in batch):
            raise UserError(f"no requested model can take --res {h}x{w}: {batch[0].problem}; choose another --res "
                            "(e.g. 256x512; `asapbench info --model MODEL --res HxW` checks one)")
        plans += batch
    order = {n: i for i, n in enumerate(models)}
    res_order = {r: i for i, r in enumerate(resolutions)}
    plans.sort(key=lambda p: (order[p.name], res_order[(p.height, p.width)]))
    return plans


def build_model(plan: ModelPlan, checkpoints: dict[str, torch.nn.Module], seed: int) -> torch.nn.Module:
    """The CPU fp32 generator of ``plan`` ready for inference: the checkpoint's, or seeded random weights
    made realistic (:func:`asapbench.weights.realistic_model`) so that ONNX exports can be reused."""
    from asapbench.weights import realistic_model

    m = checkpoints.get(plan.name)  # a checkpoint's model keeps its weights; its forms are set on it
    if m is None:  # built with the low-res form (its export file is named by it); the fused pixelwise formulation
        kwargs = {k: v for k, v in plan.overrides.items() if k != "pixelwise_impl"}  # exports the fast one's file
        m = realistic_model(plan.name, plan.height, plan.width, plan.preset, seed, **kwargs)
    for _, attr in FORMS:
        if attr in plan.overrides:
            setattr(m, attr, plan.overrides[attr])
    return m


def config_forms(cfg: SweepConfig) -> dict[str, str]:
    """The inference forms a run sets (model attribute -> value), from its config's FORMS fields."""
    return {attr: getattr(cfg, field) for field, attr in FORMS if getattr(cfg, field) is not None}


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------
_OOM_MARKERS = (
    "out of memory", "outofmemory", "cuda_error_out_of_memory", "failed to allocate memory",
    "not enough memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "std::bad_alloc",
)


class MemoryRefused(MemoryError):
    """The cell's memory estimate does not fit: refused before anything was allocated."""


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(status, note) for an exception raised by a cell."""
    if isinstance(exc, B.Unsupported):
        return "unsupported", str(exc)
    if isinstance(exc, B.GateFailed):
        return "error", str(exc)
    if isinstance(exc, BudgetExceeded):
        return "budget", str(exc)
    if isinstance(exc, MemoryRefused):
        return "oom", str(exc)
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
    """Fastest seconds per run seen per (model, backend, precision, device), with the cell it came from:
    forecasts a later cell of the same model by scaling with its MACs (never from another model)."""

    def __init__(self) -> None:
        self.best: dict[tuple, tuple[float, str]] = {}  # key -> (GMAC/s, "256x512")

    def add(self, key: tuple, gmacs: float | None, ms: float | None, res: str = "") -> None:
        if gmacs and ms:
            rate = gmacs / (ms / 1e3)
            if rate > self.best.get(key, (0.0, ""))[0]:
                self.best[key] = (rate, res)

    def predict_s(self, key: tuple, gmacs: float | None) -> float | None:
        rate = self.best.get(key, (None, ""))[0]
        return gmacs / rate if (rate and gmacs) else None

    def source(self, key: tuple) -> str:
        return self.best.get(key, (0.0, ""))[1]


def _runs(cfg: SweepConfig) -> int:
    return cfg.warmup + cfg.iters + cfg.e2e_warmup + cfg.e2e_iters


def _check_budget(rates: _Rates, key: tuple, row: BenchRow, cfg: SweepConfig) -> float | None:
    """The forecast seconds per run of this cell (from this model's own earlier cells, MACs-scaled; None
    without one). Raises BudgetExceeded only when a single run would not fit the budget: a cell that
    one run fits is started, and the timing loop decides from its own first run."""
    pred = rates.predict_s(key, row.gmacs * cfg.batch if row.gmacs else None)
    if cfg.budget_s and pred is not None and pred > cfg.budget_s:
        raise BudgetExceeded(
            f"forecast {pred:.3g} s per run (from {row.model}'s own {rates.source(key)} cell on {row.backend}, "
            f"scaled by MACs): even one run exceeds the {cfg.budget_s:g} s budget; not run; "
            f"pass --budget {_suggest_budget(pred * _runs(cfg))} (or --budget 0 for none) to time it")
    return pred


def _suggest_budget(seconds: float) -> str:
    return f"{max(1, int(seconds * 1.3 + 1)):d}"


def measure_cell(row: BenchRow, cell: B.Cell, cfg: SweepConfig, on_phase: Callable[[str], None] | None = None) -> BenchRow:
    """Prepare, load, check one output (:func:`_check_output`), warm up and time one cell, filling ``row``
    (exceptions propagate to the caller)."""
    say = on_phase or (lambda s: None)
    runner = B.make_runner(cell)
    say("exporting" if cell.backend != "torch" else "loading")
    runner.prepare()
    probe = MemoryProbe(runner.mem).start()
    say("loading")
    try:
        with runner:
            deadline = (time.perf_counter() + cfg.budget_s) if cfg.budget_s else None
            _check_output(runner, cell)
            _time_device(row, runner, cell, cfg, deadline, say)
            probe.sample()
            if cfg.e2e_iters > 0:
                _time_e2e(row, runner, cell, cfg, deadline, say)
            probe.sample()
            row.peak_mem_mib = probe.peak_mb()
            row.mem_kind = probe.mem_kind
            row.provider = runner.provider
            row.threads = runner.threads
            notes = [runner.note] if runner.note else []
            if row.cov is not None and row.cov > COV_WARN:
                notes.insert(0, f"CoV {row.cov:.1%} > {COV_WARN:.0%}: noisy timing")
            if row.peak_mem_mib is None and probe.mem_kind == "ru_maxrss_delta":
                notes.append("peak RSS hidden by an earlier, larger peak (clear_refs unavailable)")
            row.note = "; ".join(notes)
            row.status = "ok"
            return row
    finally:
        del runner
        _free_device()


class DegenerateOutput(B.GateFailed):
    """The cell's output is NaN/Inf or constant: an ``error`` row, not a time."""


def _check_output(runner: B.Runner, cell: B.Cell) -> None:
    """One host-to-host run of the cell, its output checked (finite, not constant) before anything is timed."""
    from asapbench.outputs import output_problem

    problem = output_problem(runner.run_e2e())
    if problem:
        raise DegenerateOutput(f"not timed: {problem} in the {cell.backend} {cell.precision} output "
                               "(the weights or the export are broken); check the --checkpoint")


def _time_device(row: BenchRow, runner: B.Runner, cell: B.Cell, cfg: SweepConfig, deadline: float | None,
                 say: Callable[[str], None]) -> None:
    """Warm-up and timed runs of the device-resident forward; fills the latency columns."""
    timer = CudaEventTimer() if cell.device == "cuda" else cpu_timer
    loop = run_loop(runner.run, timer, warmup=cfg.warmup, warmup_seconds=cfg.warmup_seconds, iters=cfg.iters,
                    min_seconds=cfg.min_seconds, deadline=deadline, on_run=lambda phase, i: say(f"{phase} {i}"))
    st = loop.stats
    assert st is not None
    row.samples_ms = list(loop.samples_ms)
    row.ms_median, row.ms_mean = st.median, st.mean
    row.ms_p90, row.ms_p99 = tail_percentiles(st)
    row.ms_min, row.ms_max, row.ms_std, row.cov = st.min, st.max, st.std, st.cov
    row.iters, row.warmup_iters, row.timed_s = st.n, loop.warmup_runs, loop.timed_s
    row.img_per_s = cell.batch * 1e3 / st.mean if st.mean > 0 else None


def _time_e2e(row: BenchRow, runner: B.Runner, cell: B.Cell, cfg: SweepConfig, deadline: float | None,
              say: Callable[[str], None]) -> None:
    """End-to-end runs (host input to host output); fills the e2e columns."""
    sync = torch.cuda.synchronize if cell.device == "cuda" else None
    e2e = run_loop(runner.run_e2e, synced_wall_timer(sync), warmup=cfg.e2e_warmup, warmup_seconds=0.0,
                   iters=cfg.e2e_iters, min_seconds=cfg.e2e_min_seconds, deadline=deadline,
                   on_run=lambda p, i: say(f"end-to-end {i}"))
    assert e2e.stats is not None
    row.e2e_samples_ms = list(e2e.samples_ms)
    row.e2e_ms_median, row.e2e_ms_mean, row.e2e_iters = e2e.stats.median, e2e.stats.mean, e2e.stats.n


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------
@dataclass
class SweepEvent:
    """What the sweep tells its renderer: ``start`` (``total`` cells), ``cell`` (``text`` = the cell's
    label, ``index`` its number from 1, ``eta_s`` the forecast seconds left in the sweep and ``cell_eta_s``
    this cell's, None when unknown), ``row`` (a finished ``row``, its ``index`` and in ``eta_s`` the forecast
    for the cells after it) or ``warning`` (``text``)."""

    kind: str
    text: str = ""
    row: BenchRow | None = None
    total: int = 0
    index: int = 0
    eta_s: float | None = None
    cell_eta_s: float | None = None


def _env_columns(env: dict[str, Any]) -> dict[str, str]:
    from asapbench.bench.system import ROW_ENV_KEYS

    out = {k: ("" if env.get(k) is None else str(env.get(k))) for k in ROW_ENV_KEYS}
    out["timestamp"] = str(env.get("timestamp") or "")
    return out


def _new_row(plan: ModelPlan, backend: str, precision: str, cfg: SweepConfig, threads: int,
             env_cols: dict[str, str]) -> BenchRow:
    row = BenchRow(model=plan.name, preset=plan.preset, overrides=_fmt_overrides(plan.overrides),
                   checkpoint=plan.checkpoint, backend=backend, precision=precision, device=cfg.device,
                   cuda_graph=cfg.cuda_graph, height=plan.height, width=plan.width, batch=cfg.batch, threads=threads,
                   input_nc=plan.input_nc, input=cfg.input, **env_cols)
    if plan.cost is not None:
        row.params, row.macs = int(plan.cost["params"]), int(plan.cost["macs"])
        row.gmacs = row.macs / 1e9
    return row


def _fail(row: BenchRow, exc: BaseException) -> None:
    row.status, row.note = classify_failure(exc)
    if row.status == "error" and not isinstance(exc, B.GateFailed):
        tb = traceback.extract_tb(exc.__traceback__)
        if tb:
            row.note += f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})"
    _free_device()


def iter_sweep(cfg: SweepConfig, env: dict[str, Any] | None = None,
               checkpoint_models: dict[str, torch.nn.Module] | None = None,
               on_phase: Callable[[str], None] | None = None,
               plans: list[ModelPlan] | None = None) -> Iterator[SweepEvent]:
    """Run every cell of ``cfg``, yielding events; ``on_phase`` hears the stages inside a cell.

    ``plans``: :func:`plan_models` of ``cfg`` when the caller already made them (planned once per run).
    """
    from asapbench.bench.system import snapshot
    from asapbench.inputs import example_input

    phase = on_phase or (lambda s: None)
    env = env if env is not None else snapshot()
    env_cols = _env_columns(env)
    ckpts = checkpoint_models or {}
    if plans is None:
        plans = plan_models(cfg.models, cfg.resolutions, ckpts, config_forms(cfg))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = cfg.threads or torch.get_num_threads()
    rates = _Rates()
    total = len(plans) * len(cfg.backends) * len(cfg.precisions)
    yield SweepEvent("start", total=total)
    model, model_key = None, None
    index = 0
    spent: list[float] = []  # seconds of the cells that ran (not refused up front)
    for plan in plans:
        for backend in cfg.backends:
            for precision in cfg.precisions:
                index += 1
                t_cell = time.perf_counter()
                row = _new_row(plan, backend, precision, cfg, threads, env_cols)
                label = f"{plan.name} {plan.height}x{plan.width} {backend} {precision}"
                key = (plan.name, backend, precision, cfg.device)
                pred = rates.predict_s(key, row.gmacs * cfg.batch if row.gmacs else None)
                cell_eta = pred * _runs(cfg) if pred is not None else None
                left = total - index + 1
                eta = (sum(spent) / len(spent)) * left if spent else None
                yield SweepEvent("cell", text=label, index=index, eta_s=eta, cell_eta_s=cell_eta)
                ran = False
                try:
                    if plan.problem:
                        raise B.Unsupported(plan.problem)
                    reason = B.unsupported_reason(backend, cfg.device, precision, cfg.cuda_graph)
                    if reason:
                        raise B.Unsupported(_with_install_state(backend, cfg.device, reason))
                    _check_memory(plan, cfg, precision)
                    _check_budget(rates, key, row, cfg)
                    ran = True
                    if model_key != plan.key:
                        model, model_key = None, None
                        phase(f"{label}: building")
                        model, model_key = build_model(plan, ckpts, cfg.seed), plan.key
                    model.set_input_mode(cfg.input)  # after the weights were made realistic (one-hot input)
                    x = example_input(model, cfg.batch, plan.height, plan.width, seed=cfg.seed)
                    row.input_bytes = x.element_size() * x[0].numel()
                    cell = B.Cell(model=model, x=x,
                                  height=plan.height, width=plan.width, batch=cfg.batch, backend=backend,
                                  precision=precision, device=cfg.device, cuda_graph=cfg.cuda_graph, threads=threads,
                                  cache_dir=cfg.cache_dir, seed=cfg.seed, export_check=cfg.export_check, trt=cfg.trt,
                                  progress=lambda s, label=label: phase(f"{label}: {s}"))
                    measure_cell(row, cell, cfg, on_phase=cell.progress)
                    _peak_columns(row, env.get("peaks"))
                    rates.add(key, row.gmacs * cfg.batch if row.gmacs else None, row.ms_min, plan_res(plan))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                    from asapbench.fsutil import DiskFull, is_out_of_space

                    if is_out_of_space(exc) or isinstance(exc, DiskFull):
                        _free_device()
                        # the export's own count (the real file size) when it ran out, else the estimate
                        needed = getattr(exc, "needed", 0) or _export_bytes(plan, precision)
                        raise DiskFull(cfg.cache_dir, needed, "--cache-dir folder") from None
                    _fail(row, exc)
                    if "not writable" in row.note and str(cfg.cache_dir) in row.note:
                        # the export/engine folder is the cache: name the option that moves it
                        row.note = row.note.split("; pass a writable")[0] + "; pass a writable --cache-dir folder"
                row.cell_s = time.perf_counter() - t_cell
                if ran:
                    spent.append(row.cell_s)
                after = (sum(spent) / len(spent)) * (total - index) if spent else None
                yield SweepEvent("row", row=row, index=index, eta_s=after)
                if row.status == "ok" and row.cov is not None and row.cov > COV_WARN:
                    yield SweepEvent("warning", text=(
                        f"{row.model} {row.res} {row.backend} {row.precision}: CoV {row.cov:.1%} > {COV_WARN:.0%}; "
                        "the machine was busy or clocks varied: rerun with more --iters/--min-seconds"))


def _peak_columns(row: BenchRow, peaks: dict[str, Any] | None) -> None:
    """The row's achieved GFLOP/s (its MACs at its median time) and its fraction of the GEMM peak measured in its
    backend's library at its precision (``peaks``: :func:`asapbench.bench.profile.measure_peaks`)."""
    from asapbench.bench.profile import fraction_of_peak

    peak = (((peaks or {}).get("backends") or {}).get(row.backend) or {}).get(row.precision) or {}
    row.peak_gflops = peak.get("gflops")
    secs = row.ms_median / 1e3 if row.ms_median else None
    row.gflops, row.peak_fraction = fraction_of_peak(row.macs * row.batch if row.macs else None, secs, row.peak_gflops)


def plan_res(plan: ModelPlan) -> str:
    return f"{plan.height}x{plan.width}"


def _export_bytes(plan: ModelPlan, precision: str) -> int:
    """About how many bytes the cell's ONNX export writes (its weights at the precision, plus 10%)."""
    from asapbench.bench.memory import BYTES

    params = int((plan.cost or {}).get("params") or 0)
    return int(params * BYTES.get(precision, 4) * 1.1)


def _check_memory(plan: ModelPlan, cfg: SweepConfig, precision: str) -> None:
    """Refuse (MemoryError: an ``oom`` row) a cell whose memory estimate exceeds what the device has free."""
    from asapbench.bench.memory import BYTES, MemoryEstimate, fits

    est = plan.memory
    if est is None:
        return
    scale = BYTES.get(precision, 4) / 4  # plan.memory is the fp32 estimate
    cell_est = MemoryEstimate(int(est.weights * scale), int(est.activations * scale * cfg.batch), est.io * cfg.batch)
    ok, why = fits(cell_est, cfg.device)
    if not ok:
        raise MemoryRefused(f"not run: {why}")


def _with_install_state(backend: str, device: str, reason: str) -> str:
    """A device reason plus whether the backend's runtime is installed at all (TensorRT on a CPU machine
    says both: it needs --device cuda *and* it is not installed)."""
    b = B.BACKENDS.get(backend)
    if b is None or device in b.devices or "cuda" not in b.devices:
        return reason
    try:
        missing = b.runner_class().availability(b, "cuda")
    except Exception as exc:  # noqa: BLE001
        missing = str(exc)
    return f"{reason}; also {missing}" if missing else reason


def cpu_defaults() -> dict[str, Any]:
    """Loop settings for a CPU run: a stable median (>= 10 runs and >= 3 s, as trtexec), end-to-end from 5 runs;
    the default `asapbench run` (3 models at 256x512, torch and onnxruntime) takes about 5 min on 2 cores."""
    return dict(warmup=2, warmup_seconds=0.0, iters=10, min_seconds=3.0, e2e_warmup=1, e2e_iters=5, e2e_min_seconds=0.0)


def cuda_defaults() -> dict[str, Any]:
    """Loop settings for a GPU run (in the spirit of trtexec / optimum-benchmark)."""
    return dict(warmup=10, warmup_seconds=1.0, iters=50, min_seconds=3.0, e2e_warmup=3, e2e_iters=20, e2e_min_seconds=1.0)

