"""Issue 12 (harness) and issue 10 item 5 (budget forecast), in process: the per-model budget forecast,
ETA events, CPU loop defaults and tail percentiles, raw samples in bench.json, the new bench.md sections
and plot, one consistent set per folder (simulated ENOSPC), a read-only cache, the memory estimate, the
folder lock and stale temporary files."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from asapbench.bench import sweep as S
from asapbench.bench.timing import P90_MIN_SAMPLES, P99_MIN_SAMPLES, summarize, tail_percentiles
from asapbench.commands.run import build_config, run_benchmark
from asapbench.errors import UserError
from asapbench.record import BenchRow
from asapbench.report import markdown, plot_png, read_csv, render_all

REPO = Path(__file__).resolve().parents[1]
FAST = dict(warmup=1, iters=3, min_seconds=0.0, e2e_iters=1, export_check=False, progress=False)


# ---------------------------------------------------------------------------------------------
# budget forecast (issue 10 item 5)
# ---------------------------------------------------------------------------------------------
def _cfg(**kw):
    base = dict(models=["a"], resolutions=[(32, 64)], backends=["torch"], warmup=1, iters=3, e2e_iters=1, budget_s=10.0)
    base.update(kw)
    return S.SweepConfig(**base)


def test_forecast_is_per_model_and_scaled_by_macs():
    rates = S._Rates()
    rates.add(("small", "torch", "fp32", "cpu"), 1.0, 100.0, "32x64")  # 10 GMAC/s
    # another model's cells never predict this one
    assert rates.predict_s(("big", "torch", "fp32", "cpu"), 50.0) is None
    # the same model at 4x the MACs: 4x the time
    assert rates.predict_s(("small", "torch", "fp32", "cpu"), 4.0) == pytest.approx(0.4)
    assert rates.predict_s(("small", "onnxruntime", "fp32", "cpu"), 4.0) is None


def test_a_cell_one_run_fits_is_not_skipped():
    rates = S._Rates()
    key = ("m", "torch", "fp32", "cpu")
    rates.add(key, 1.0, 1000.0, "32x64")  # 1 GMAC/s
    row = BenchRow(model="m", backend="torch", gmacs=4.0)  # forecast 4 s per run, 5 runs = 20 s > 10 s budget
    assert S._check_budget(rates, key, row, _cfg()) == pytest.approx(4.0)  # started: the loop decides
    row = BenchRow(model="m", backend="torch", gmacs=40.0)  # 40 s per run: even one run exceeds the budget
    with pytest.raises(S.BudgetExceeded) as e:
        S._check_budget(rates, key, row, _cfg())
    msg = str(e.value)
    assert "forecast 40 s per run" in msg and "m's own 32x64 cell" in msg and "--budget" in msg


def test_budget_row_from_the_first_run_and_its_console_line(tmp_path, capsys):
    rows = run_benchmark(out=tmp_path, models=["asapnet-tiny"], res=["32x64"], backends=["torch"], budget=1e-6,
                         cache_dir=tmp_path / "c", **FAST)
    assert rows[0].status == "budget" and "budget" in rows[0].note
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "no time:" in ln]
    assert "--budget" in line and "asapnet-tiny 32x64 torch fp32" in line


# ---------------------------------------------------------------------------------------------
# ETA, loop defaults, tail percentiles, raw samples, input channels
# ---------------------------------------------------------------------------------------------
def test_cell_events_carry_an_eta(tmp_path):
    cfg = build_config(models=["asapnet-tiny"], res=["32x64", "64x64"], backends=["torch"], device="cpu",
                       warmup=1, iters=3, min_seconds=0, e2e_iters=1, cache_dir=tmp_path)
    cells = [ev for ev in S.iter_sweep(cfg) if ev.kind == "cell"]
    assert [ev.index for ev in cells] == [1, 2]
    assert cells[0].eta_s is None and cells[0].cell_eta_s is None  # nothing to forecast from yet
    assert cells[1].eta_s is not None and cells[1].eta_s > 0
    assert cells[1].cell_eta_s is not None and cells[1].cell_eta_s > 0  # the same model's first cell, MACs-scaled


def test_cpu_defaults_give_a_stable_median(tmp_path):
    """A CPU cell timed with no loop option: what the README promises for a stable median (at least 2 warm-up
    runs, 10 timed runs over at least 3 s, 5 end-to-end runs), read from the row the sweep wrote."""
    rows = run_benchmark(out=tmp_path, models=["asapnet-tiny"], res=["32x64"], backends=["torch"], device="cpu",
                         cache_dir=tmp_path / "c", progress=False)
    (r,) = rows
    assert r.status == "ok", r.note
    assert r.warmup_iters >= 2 and r.iters >= 10 and len(r.samples_ms) == r.iters
    assert r.timed_s >= 3.0
    assert r.e2e_iters >= 5 and len(r.e2e_samples_ms) == r.e2e_iters


def test_p90_p99_only_where_the_sample_count_supports_them():
    assert tail_percentiles(summarize([1.0, 2.0, 3.0])) == (None, None)
    p90, p99 = tail_percentiles(summarize([float(i) for i in range(P90_MIN_SAMPLES)]))
    assert p90 is not None and p99 is None
    p90, p99 = tail_percentiles(summarize([float(i) for i in range(P99_MIN_SAMPLES)]))
    assert p90 is not None and p99 is not None


def test_bench_json_keeps_raw_samples_and_rows_know_their_input_channels(tmp_path):
    rows = run_benchmark(out=tmp_path, models=["asapnet-tiny"], res=["32x64"], backends=["torch"],
                         cache_dir=tmp_path / "c", **FAST)
    (r,) = rows
    assert r.ms_p90 is None and r.ms_p99 is None  # 3 runs: no tail percentiles
    obj = json.loads((tmp_path / "bench.json").read_text())
    assert obj["complete"] is True
    rec = obj["rows"][0]
    assert len(rec["samples_ms"]) == r.iters and len(rec["e2e_samples_ms"]) == r.e2e_iters
    assert sorted(rec["samples_ms"])[len(rec["samples_ms"]) // 2] == pytest.approx(r.ms_median)
    assert r.input_nc == 7 and read_csv(tmp_path / "bench.csv")[0].input_nc == 7
    assert "samples_ms" not in (tmp_path / "bench.csv").read_text().splitlines()[0]


def test_old_results_still_render(tmp_path):
    rows = read_csv(REPO / "results" / "cpu-2core" / "bench.csv")
    assert rows and all(r.input_nc is None for r in rows)  # written before the column existed
    md = markdown(rows)
    assert "## Fastest per resolution" in md and "## Models" in md


# ---------------------------------------------------------------------------------------------
# bench.md and the plot
# ---------------------------------------------------------------------------------------------
def _r(model, ms, backend="torch", cov=0.01, **kw):
    return BenchRow(model=model, preset=kw.pop("preset", "p"), backend=backend, height=256, width=512, ms_median=ms,
                    cov=cov, status="ok", input_nc=kw.pop("input_nc", 36), **kw)


def test_markdown_models_fastest_backends_and_noisy_speedups():
    rows = [_r("asapnet", 10.0, preset="facades1024", input_nc=13), _r("pix2pixhd", 60.0, cov=0.2),
            _r("asapnet", 5.0, backend="onnxruntime"), _r("pix2pixhd", 30.0, backend="onnxruntime")]
    md = markdown(rows)
    models = md.split("## Models")[1].split("##")[0]
    assert "| asapnet | facades1024; 13 input channels |" in models
    assert "| pix2pixhd | p; 36 input channels |" in models
    sp = md.split("## ASAP-Net speed-up")[1].split("##")[0]
    assert "| asapnet vs pix2pixhd | torch | fp32 | cpu | 6.00x† |" in sp  # pix2pixhd torch is noisy
    assert "| asapnet vs pix2pixhd | onnxruntime | fp32 | cpu | 6.00x |" in sp
    fastest = md.split("## Fastest per resolution")[1].split("##")[0]
    assert "256x512 (cpu): **asapnet onnxruntime fp32**, 5.00 ms; next asapnet torch fp32 10.0 ms (2.00x slower)" in fastest
    be = md.split("## Backends per model")[1].split("##")[0]
    assert "| asapnet | 256x512 | fp32 | cpu | 10.0 (1.00x) | 5.00 (2.00x) |" in be
    assert "| pix2pixhd | 256x512 | fp32 | cpu | 60.0 (1.00x)† | 30.0 (2.00x)† |" in be
    assert "CoV, in % everywhere" in md


def test_incomplete_marker_in_markdown_and_json(tmp_path):
    state = {"complete": False, "reason": "interrupted (SIGINT)", "cells_done": 1, "cells_total": 3}
    render_all([_r("asapnet", 10.0)], tmp_path, run_state=state)
    assert "**Incomplete run: interrupted (SIGINT) after 1 of 3 cells.**" in (tmp_path / "bench.md").read_text()
    obj = json.loads((tmp_path / "bench.json").read_text())
    assert obj["complete"] is False and obj["incomplete"] == {"reason": "interrupted (SIGINT)", "cells_done": 1,
                                                              "cells_total": 3}


def test_one_resolution_plots_bars_and_marks_noise(monkeypatch):
    import asapbench.report as R

    called = []
    real = R._bars
    monkeypatch.setattr(R, "_bars", lambda ax, df, m: (called.append(list(df.model)), real(ax, df, m)))
    png = plot_png([_r("asapnet", 10.0), _r("spade", 50.0, cov=0.3)])
    assert png.startswith(b"\x89PNG") and called == [["asapnet", "spade"]]
    two = [_r("asapnet", 10.0), BenchRow(model="asapnet", backend="torch", height=512, width=512, ms_median=30.0, cov=0.3)]
    assert plot_png(two).startswith(b"\x89PNG") and len(called) == 1  # two resolutions: lines


# ---------------------------------------------------------------------------------------------
# files: replaced together, ENOSPC, stale .tmp, lock, read-only cache
# ---------------------------------------------------------------------------------------------
def test_enospc_while_writing_keeps_the_old_set(tmp_path, monkeypatch):
    import asapbench.fsutil as F

    render_all([_r("old", 1.0)], tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = os.fdopen
    state = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            state["n"] += 1
            if state["n"] == 3:  # the third file does not fit
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, k):
            return getattr(self.f, k)

    monkeypatch.setattr(F.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(F.DiskFull) as e:
        render_all([_r("new", 2.0)], tmp_path)
    assert str(tmp_path) in str(e.value) and "needed" in str(e.value) and "--out" in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old set intact, no .tmp left


def test_enospc_in_the_cache_stops_the_sweep_naming_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import asapbench.bench.runner_ort as RO

    def full(cell):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RO, "export_for", full)
    with pytest.raises(UserError) as e:
        run_benchmark(out=tmp_path / "o", models=["asapnet-tiny"], res=["32x64"], backends=["onnxruntime"],
                      cache_dir=tmp_path / "cache", **FAST)
    msg = str(e.value)
    assert "no space left" in msg and str(tmp_path / "cache") in msg and "--cache-dir" in msg and "KiB needed" in msg


def test_clean_stale_tmp_and_lock(tmp_path):
    from asapbench.fsutil import FolderLock, clean_stale_tmp

    old, new = tmp_path / ".bench.md.x.tmp", tmp_path / ".bench.csv.y.tmp"
    for p in (old, new):
        p.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert clean_stale_tmp(tmp_path) == [old] and new.exists()  # a live writer's file is kept

    with FolderLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists()
    lock.path.write_text(json.dumps({"pid": 2**22 + 12345}))  # no such process
    with FolderLock(tmp_path) as lock:
        assert lock.stale["pid"] == 2**22 + 12345


def test_read_only_cache_reuses_a_valid_export_and_names_the_option(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import asapbench.fsutil as F

    cache = tmp_path / "cache"
    rows = run_benchmark(out=tmp_path / "o1", models=["asapnet-tiny"], res=["32x64"], backends=["onnxruntime"],
                         cache_dir=cache, **FAST)
    assert rows[0].status == "ok"
    real = F.tempfile.mkstemp

    def read_only(*a, dir=None, **kw):  # nothing can be created under the cache (root ignores chmod)
        if dir is not None and str(dir).startswith(str(cache)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(F.tempfile, "mkstemp", read_only)
    rows = run_benchmark(out=tmp_path / "o2", models=["asapnet-tiny"], res=["32x64"], backends=["onnxruntime"],
                         cache_dir=cache, **FAST)
    assert rows[0].status == "ok", rows[0].note  # the valid cached export is reused
    rows = run_benchmark(out=tmp_path / "o3", models=["asapnet-tiny"], res=["64x64"], backends=["onnxruntime"],
                         cache_dir=cache, **FAST)  # a new export must be written: the note names --cache-dir
    assert rows[0].status == "error" and "--cache-dir" in rows[0].note and "--out" not in rows[0].note


# ---------------------------------------------------------------------------------------------
# memory estimate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, h, w", [("asapnet-tiny", 256, 512), ("pix2pixhd-tiny", 256, 256), ("spade-tiny", 128, 256)])
def test_memory_estimate_bounds_the_measured_peak(name, h, w):
    import torch

    from asapbench.bench.memory import estimate
    from asapbench.bench.timing import MemoryProbe
    from asapbench.inputs import example_input
    from asapbench.registry import build_for_resolution, model_names

    if name not in model_names():
        pytest.skip(f"{name} is not registered")
    est = estimate(build_for_resolution(name, h, w, device="meta"), 1, h, w)
    probe = MemoryProbe("cpu").start()
    m = build_for_resolution(name, h, w).prepare_for_inference()
    with torch.no_grad():
        m(example_input(m, 1, h, w))
    peak = probe.peak_mb()
    if peak is None:
        pytest.skip("peak RSS cannot be reset here")
    # a bound (never below the measured peak), and not a loose one: without its fixed runtime allowance
    # (OVERHEAD x SAFETY, 77 MiB, which dominates at these sizes) at most twice the measured peak -- a looser
    # estimate refuses cells that fit in half the memory (measured: 31/28, 10/26, 13/31 MiB here)
    from asapbench.bench.memory import OVERHEAD, SAFETY

    assert peak * 2**20 <= est.total, (peak, est.describe())
    assert est.total - OVERHEAD * SAFETY <= 2 * peak * 2**20, (peak, est.describe())


def test_a_cell_that_cannot_fit_is_an_oom_row_without_building(tmp_path, monkeypatch):
    import asapbench.bench.memory as M

    monkeypatch.setattr(M, "available_bytes", lambda device="cpu": 1024)
    monkeypatch.setattr(S, "build_model", lambda *a, **k: pytest.fail("built a model that cannot fit"))
    rows = run_benchmark(out=tmp_path, models=["asapnet-tiny"], res=["32x64"], backends=["torch"],
                         cache_dir=tmp_path / "c", **FAST)
    assert rows[0].status == "oom" and "more than the" in rows[0].note and "--res" in rows[0].note
