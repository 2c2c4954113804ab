"""Statistics on known samples, the warm-up/timed loop rules, the budget check and memory probes."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from asapbench.bench.timing import (
    BudgetExceeded,
    MemoryProbe,
    cpu_timer,
    run_loop,
    summarize,
)


def test_summarize_known_samples():
    # samples 1, 2, 3, 4, 10 (ms), worked by hand:
    # mean 20/5 = 4; median 3; p90 at rank 0.9*4 = 3.6 -> 4 + 0.6*(10-4) = 7.6;
    # p99 at rank 3.96 -> 4 + 0.96*6 = 9.76; squared deviations 9+4+1+0+36 = 50,
    # sample variance 50/4 = 12.5, std sqrt(12.5) = 3.5355..., CoV std/mean = 0.8838...
    s = summarize([3.0, 1.0, 10.0, 2.0, 4.0])
    assert s.n == 5
    assert s.mean == pytest.approx(4.0)
    assert s.median == pytest.approx(3.0)
    assert s.p90 == pytest.approx(7.6)
    assert s.p99 == pytest.approx(9.76)
    assert (s.min, s.max) == (1.0, 10.0)
    assert s.std == pytest.approx(math.sqrt(12.5))
    assert s.cov == pytest.approx(math.sqrt(12.5) / 4.0)


def test_summarize_matches_numpy_on_random_samples():
    a = np.random.default_rng(0).gamma(4.0, 2.0, size=257)
    s = summarize(a.tolist())
    assert s.mean == pytest.approx(a.mean())
    assert s.median == pytest.approx(np.median(a))
    assert s.p90 == pytest.approx(np.percentile(a, 90))
    assert s.p99 == pytest.approx(np.percentile(a, 99))
    assert s.std == pytest.approx(a.std(ddof=1))


def test_summarize_single_and_constant_samples():
    one = summarize([5.0])
    assert (one.mean, one.median, one.p99, one.std, one.cov) == (5.0, 5.0, 5.0, 0.0, 0.0)
    const = summarize([2.0] * 4)
    assert const.std == 0.0 and const.cov == 0.0
    even = summarize([1.0, 2.0, 3.0, 4.0])
    assert even.median == 2.5 and even.p90 == pytest.approx(3.7)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


class FakeClock:
    """A timer whose runs take preset durations; counts how often fn was called."""

    def __init__(self, durations_ms):
        self.durations = list(durations_ms)
        self.calls = 0

    def __call__(self, fn):
        fn()
        d = self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1
        return d


def test_loop_counts_warmup_and_timed_runs():
    calls = []
    clock = FakeClock([100.0, 50.0, 1.0, 2.0, 3.0, 4.0])
    res = run_loop(lambda: calls.append(1), clock, warmup=2, warmup_seconds=0, iters=4, min_seconds=0)
    assert len(calls) == 6 and res.warmup_runs == 2
    # the two slow warm-up runs are not among the timed samples
    assert res.samples_ms == [1.0, 2.0, 3.0, 4.0]
    assert res.stats.median == 2.5


def test_loop_honours_minimum_seconds_for_warmup_and_timing():
    def sleep():
        time.sleep(0.01)

    res = run_loop(sleep, cpu_timer, warmup=1, warmup_seconds=0.05, iters=1, min_seconds=0.08)
    assert res.warmup_runs >= 4 and res.warmup_s >= 0.05
    assert len(res.samples_ms) >= 6 and res.timed_s >= 0.08
    assert all(s >= 9.0 for s in res.samples_ms)  # perf_counter saw each 10 ms sleep


def test_loop_stops_when_the_budget_would_be_exceeded():
    def slow():
        time.sleep(0.03)

    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded) as ei:
        run_loop(slow, cpu_timer, warmup=1, warmup_seconds=0, iters=50, min_seconds=0, deadline=time.perf_counter() + 0.2)
    # predicted after the first run (50 x 30 ms > 0.2 s), not after running into the wall
    assert time.perf_counter() - t0 < 0.15
    assert "budget" in str(ei.value)


def test_loop_within_budget_finishes():
    res = run_loop(lambda: None, cpu_timer, warmup=1, warmup_seconds=0, iters=5, min_seconds=0,
                   deadline=time.perf_counter() + 10)
    assert len(res.samples_ms) == 5


def test_cpu_memory_probe_sees_a_peak_that_was_freed():
    probe = MemoryProbe("cpu").start()
    buf = bytearray(200 * 2**20)  # 200 MiB, touched by bytearray's zero fill
    buf[::4096] = b"\x01" * len(buf[::4096])
    del buf
    peak = probe.peak_mb()
    assert probe.mem_kind in ("rss_peak_delta", "ru_maxrss_delta")
    if probe.mem_kind == "ru_maxrss_delta" and peak is None:
        pytest.skip("peak RSS cannot be reset here and an earlier peak hides this one")
    assert 190 <= peak < 400
    # a fresh probe starts from zero again
    assert MemoryProbe("cpu").start().peak_mb() < 50


@pytest.mark.gpu
def test_cuda_event_timer_and_torch_memory_probe():
    import torch

    from asapbench.bench.timing import CudaEventTimer

    a = torch.randn(2048, 2048, device="cuda")
    probe = MemoryProbe("cuda_torch").start()
    ms = CudaEventTimer()(lambda: a @ a)
    assert ms > 0
    assert probe.peak_mb() >= 15  # the 16 MiB result
