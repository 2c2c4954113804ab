"""Timers, warm-up/timed loops, summary statistics and peak-memory probes.

Method (results/README.md, "Timing method"):

- every run is synchronised before its time is taken: on the GPU each iteration is bracketed by two
  CUDA events on the current stream and the end event is waited on (``torch.cuda.Event``,
  ``elapsed_time``); on the CPU the run is timed with ``time.perf_counter_ns`` (torch and
  onnxruntime CPU calls return when the work is done);
- a warm-up of at least ``warmup`` runs *and* ``warmup_seconds`` seconds precedes the timed runs,
  which go on for at least ``iters`` runs *and* ``min_seconds`` seconds;
- statistics over the per-run times: mean, median, p90, p99 (numpy's linear interpolation), min,
  max, sample standard deviation (ddof=1) and coefficient of variation std/mean. A result row
  reports p90 only from :data:`P90_MIN_SAMPLES` runs and p99 only from :data:`P99_MIN_SAMPLES`
  runs (:func:`tail_percentiles`); with fewer the columns are empty.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

#: a coefficient of variation above this gets a warning in the row's note and on the console
COV_WARN = 0.05
#: fewest samples a reported p90 / p99 needs (below, the percentile is an interpolation between the top runs)
P90_MIN_SAMPLES = 10
P99_MIN_SAMPLES = 100


def tail_percentiles(stats: Stats) -> tuple[float | None, float | None]:
    """(p90, p99) of ``stats`` where the sample count supports them, else None."""
    return (stats.p90 if stats.n >= P90_MIN_SAMPLES else None,
            stats.p99 if stats.n >= P99_MIN_SAMPLES else None)


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """Summary of per-run times in milliseconds."""

    n: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    std: float
    cov: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Statistics of per-run times (ms): percentiles use linear interpolation, std uses ddof=1.

    With a single sample the standard deviation and CoV are 0 (nothing to spread).
    """
    import numpy as np

    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarise")
    if not np.all(np.isfinite(a)):
        raise ValueError("samples must be finite")
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return Stats(
        n=int(a.size),
        mean=mean,
        median=float(np.median(a)),
        p90=float(np.percentile(a, 90)),
        p99=float(np.percentile(a, 99)),
        min=float(a.min()),
        max=float(a.max()),
        std=std,
        cov=std / mean if mean > 0 else 0.0,
    )


# --------------------------------------------------------------------------------------------
# timers: call fn once, return its duration in ms, synchronised
# --------------------------------------------------------------------------------------------
def cpu_timer(fn: Callable[[], object]) -> float:
    """Wall time of one synchronous call, ms (``time.perf_counter_ns``)."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


class CudaEventTimer:
    """GPU time of one call between two CUDA events on the current stream, waiting for the end event.

    Work that the call enqueues on the current stream (torch, TensorRT with torch's stream) is timed
    on the device; a call that synchronises itself (onnxruntime ``run_with_iobinding``) is timed
    from the start event to the end event recorded after it returned, i.e. its full latency.
    """

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def __call__(self, fn: Callable[[], object]) -> float:
        torch = self._torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


def synced_wall_timer(sync: Callable[[], object] | None) -> Callable[[Callable[[], object]], float]:
    """``perf_counter_ns`` around ``fn(); sync()``: end-to-end latency (host input to host output)."""

    def timer(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter_ns()
        fn()
        if sync is not None:
            sync()
        return (time.perf_counter_ns() - t0) / 1e6

    return timer


# --------------------------------------------------------------------------------------------
# loops
# --------------------------------------------------------------------------------------------
class BudgetExceeded(RuntimeError):
    """The per-cell time budget ran out (or would, judging by the fastest run so far)."""

    def __init__(self, message: str, samples_ms: Sequence[float] = ()) -> None:
        super().__init__(message)
        self.samples_ms = list(samples_ms)


@dataclass
class LoopResult:
    """Per-run times of the timed phase plus what the warm-up did."""

    samples_ms: list[float]
    warmup_runs: int
    warmup_s: float
    timed_s: float
    stats: Stats | None = field(default=None)


def _needed(done: int, at_least: int, elapsed: float, min_seconds: float, per_run_s: float) -> int:
    """Runs still needed to reach ``at_least`` runs and ``min_seconds`` seconds at ``per_run_s`` each."""
    by_count = max(0, at_least - done)
    by_time = math.ceil(max(0.0, min_seconds - elapsed) / per_run_s) if per_run_s > 0 else 0
    return max(by_count, by_time)


def run_loop(
    fn: Callable[[], object],
    timer: Callable[[Callable[[], object]], float],
    *,
    warmup: int,
    warmup_seconds: float,
    iters: int,
    min_seconds: float,
    deadline: float | None = None,
    on_run: Callable[[str, int], None] | None = None,
) -> LoopResult:
    """Warm up (>= ``warmup`` runs and >= ``warmup_seconds``), then time (>= ``iters`` runs and >= ``min_seconds``).

    ``deadline`` is a ``time.perf_counter()`` value: after every run the loop checks whether the
    remaining runs would end past it at the fastest per-run time seen so far, and raises
    :class:`BudgetExceeded` if so (or if the deadline has passed). ``on_run(phase, i)`` is called
    after each run (progress display).
    """
    if iters < 1:
        raise ValueError("iters must be >= 1")
    fastest = math.inf

    def check(phase_left: int) -> None:
        if deadline is None:
            return
        now = time.perf_counter()
        left = phase_left * (fastest / 1e3)
        if now > deadline or now + left > deadline:
            raise BudgetExceeded(
                f"the fastest run took {fastest / 1e3:.3g} s; {phase_left} more run(s) would pass the time budget",
                samples,
            )

    samples: list[float] = []
    t0 = time.perf_counter()
    n_warm = 0
    while n_warm < warmup or time.perf_counter() - t0 < warmup_seconds:
        ms = timer(fn)
        fastest = min(fastest, ms)
        n_warm += 1
        if on_run is not None:
            on_run("warmup", n_warm)
        elapsed = time.perf_counter() - t0
        left = _needed(n_warm, warmup, elapsed, warmup_seconds, fastest / 1e3)
        check(left + _needed(0, iters, 0.0, min_seconds, fastest / 1e3))
    warm_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    while len(samples) < iters or time.perf_counter() - t1 < min_seconds:
        ms = timer(fn)
        samples.append(ms)
        fastest = min(fastest, ms)
        if on_run is not None:
            on_run("timed", len(samples))
        left = _needed(len(samples), iters, time.perf_counter() - t1, min_seconds, fastest / 1e3)
        if left:
            check(left)
    timed_s = time.perf_counter() - t1
    return LoopResult(samples, n_warm, warm_s, timed_s, summarize(samples))


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident set size of this process now (Linux ``/proc/self/status``), bytes."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb * 1024


def _ru_maxrss_bytes() -> int:
    import resource

    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(v) if sys.platform == "darwin" else int(v) * 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS: ``echo 5 > /proc/self/clear_refs``."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``) before a baseline."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class MemoryProbe:
    """Peak memory of one cell; ``start()`` before the runtime loads the model, ``sample()`` between runs.

    Kinds (the ``mem_kind`` column):
    - ``rss_peak_delta``: CPU. The kernel's peak-RSS counter is reset at ``start()`` (Linux
      ``clear_refs``), so the result is the cell's own high-water mark minus the RSS at ``start()``.
    - ``ru_maxrss_delta``: CPU fallback where the counter cannot be reset: ``getrusage`` is a
      process-wide maximum, so the value is only known when this cell raised it (else empty).
    - ``cuda_max_allocated``: torch on CUDA: ``torch.cuda.max_memory_allocated`` after resetting the
      peak statistics, minus what was allocated at ``start()``.
    - ``cuda_device_delta``: onnxruntime / TensorRT on CUDA: drop of ``torch.cuda.mem_get_info``
      free memory from ``start()`` to the lowest value sampled between runs (arenas and engines keep
      their memory, so the retained maximum is what is seen).
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("cpu", "cuda_torch", "cuda_device"):
            raise ValueError(kind)
        self.kind = kind
        self.mem_kind = ""
        self._base = 0
        self._min_free: int | None = None
        self._maxrss0 = 0

    def start(self) -> MemoryProbe:
        release_memory()
        if self.kind == "cpu":
            self._base = current_rss_bytes() or 0
            if _reset_hwm():
                self.mem_kind = "rss_peak_delta"
            else:
                self.mem_kind = "ru_maxrss_delta"
                self._maxrss0 = _ru_maxrss_bytes()
                self._base = max(self._base, 0)
        else:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            if self.kind == "cuda_torch":
                torch.cuda.reset_peak_memory_stats()
                self._base = torch.cuda.memory_allocated()
                self.mem_kind = "cuda_max_allocated"
            else:
                free, _total = torch.cuda.mem_get_info()
                self._base = free
                self._min_free = free
                self.mem_kind = "cuda_device_delta"
        return self

    def sample(self) -> None:
        """Record device free memory now (only used for ``cuda_device_delta``)."""
        if self.kind == "cuda_device":
            import torch

            torch.cuda.synchronize()
            free, _ = torch.cuda.mem_get_info()
            self._min_free = free if self._min_free is None else min(self._min_free, free)

    def peak_mb(self) -> float | None:
        """The cell's peak memory in MiB (None where it cannot be known honestly)."""
        if self.kind == "cpu":
            if self.mem_kind == "rss_peak_delta":
                hwm = _proc_status_kb("VmHWM")
                return None if hwm is None else max(0, hwm * 1024 - self._base) / 2**20
            now = _ru_maxrss_bytes()
            if now <= self._maxrss0:
                return None  # an earlier cell's peak hides this one
            return max(0, now - self._base) / 2**20
        import torch

        if self.kind == "cuda_torch":
            return max(0, torch.cuda.max_memory_allocated() - self._base) / 2**20
        self.sample()
        return max(0, self._base - (self._min_free or self._base)) / 2**20


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
