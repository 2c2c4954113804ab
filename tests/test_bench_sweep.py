"""Sweeps of the tiny models on the CPU with torch and onnxruntime: consistent outputs, MACs equal to
`asapbench info`, and failures (injected error, OOM, budget, unavailable backend, Ctrl-C) that stay
in their own row."""

from __future__ import annotations

import json

import pytest

from asapbench.bench import backends as B
from asapbench.bench import sweep as S
from asapbench.commands.run import run_benchmark
from asapbench.errors import UserError
from asapbench.registry import model_names
from asapbench.report import read_csv

pytest.importorskip("onnxruntime", reason="onnxruntime is needed for the onnxruntime backend")

TINY = [m for m in ("asapnet-tiny", "pix2pixhd-tiny", "spade-tiny") if m in model_names()]
FAST = dict(warmup=1, iters=3, min_seconds=0.0, e2e_iters=1, export_check=False, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def _run(out, cache, **kw):
    opts = {**FAST, **kw}
    return run_benchmark(out=out, cache_dir=cache, **opts)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("sweep")
    # 100 timed runs: p90 and p99 are only reported from 10 and 100 samples
    rows = _run(out, cache, models=TINY, res=["32x64"], backends=["torch", "onnxruntime"], precision=["fp32"], iters=100)
    return out, rows


def test_tiny_sweep_writes_consistent_outputs(tiny_sweep):
    out, rows = tiny_sweep
    assert [(r.model, r.backend) for r in rows] == [(m, b) for m in TINY for b in ("torch", "onnxruntime")]
    assert all(r.status == "ok" for r in rows), [(r.model, r.backend, r.note) for r in rows if r.status != "ok"]
    for r in rows:
        assert (r.height, r.width, r.device, r.precision, r.batch) == (32, 64, "cpu", "fp32", 1)
        assert r.ms_min <= r.ms_median <= r.ms_p90 <= r.ms_p99 <= r.ms_max
        assert r.iters >= 3 and r.warmup_iters >= 1 and r.e2e_iters == 1 and r.e2e_ms_median > 0
        assert r.img_per_s == pytest.approx(1e3 / r.ms_mean)
        assert r.peak_mem_mib is not None and r.peak_mem_mib >= 0 and r.mem_kind
        assert r.threads >= 1 and r.torch_version and r.cpu_model
    assert {r.provider for r in rows if r.backend == "onnxruntime"} == {"CPUExecutionProvider"}
    # the four renderings agree
    assert read_csv(out / "bench.csv") == rows
    obj = json.loads((out / "bench.json").read_text())
    assert len(obj["rows"]) == len(rows) and obj["environment"]["torch_version"]
    assert [r["ms_median"] for r in obj["rows"]] == [r.ms_median for r in rows]
    md = (out / "bench.md").read_text()
    for r in rows:
        assert f"| {r.model} | {r.backend} | fp32 | cpu |" in md
    for m in TINY[1:]:
        assert f"| asapnet-tiny vs {m} | torch | fp32 | cpu |" in md
    png = (out / "latency_vs_megapixels.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_macs_column_equals_asapbench_info(tiny_sweep):
    from asapbench.commands.models_info import model_info

    _, rows = tiny_sweep
    for r in rows:
        info = model_info(r.model, res=r.res)
        assert r.macs == info["macs"] and r.params == info["params"]
        assert r.gmacs == pytest.approx(info["macs"] / 1e9)
        assert r.preset == info["preset"]


def test_injected_failure_stays_in_its_cell(tmp_path, cache, monkeypatch):
    real = B.make_runner

    def flaky(cell):
        if cell.backend == "torch" and (cell.height, cell.width) == (64, 64):
            raise RuntimeError("injected failure")
        return real(cell)

    monkeypatch.setattr(B, "make_runner", flaky)
    rows = _run(tmp_path, cache, models=["asapnet-tiny"], res=["32x64", "64x64"], backends=["torch", "onnxruntime"])
    status = {(r.res, r.backend): r.status for r in rows}
    assert status == {("32x64", "torch"): "ok", ("32x64", "onnxruntime"): "ok",
                      ("64x64", "torch"): "error", ("64x64", "onnxruntime"): "ok"}
    bad = next(r for r in rows if r.status == "error")
    assert "injected failure" in bad.note and bad.ms_median is None
    assert bad.macs is not None  # the cost is known even when the timing failed
    assert [r.status for r in read_csv(tmp_path / "bench.csv")] == [r.status for r in rows]
    assert "*error*" in (tmp_path / "bench.md").read_text()


def test_oom_budget_and_unavailable_backends_are_rows(tmp_path, cache, monkeypatch):
    real = B.make_runner

    def oom(cell):
        if cell.backend == "onnxruntime":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(cell)

    monkeypatch.setattr(B, "make_runner", oom)
    rows = _run(tmp_path, cache, models=["asapnet-tiny"], res=["32x64"],
                backends=["torch", "onnxruntime", "tensorrt", "onnxruntime-trt"], precision=["fp32", "fp16"])
    got = {(r.backend, r.precision): r for r in rows}
    assert got[("torch", "fp32")].status == "ok"
    assert got[("onnxruntime", "fp32")].status == "oom"
    for key in [("tensorrt", "fp32"), ("onnxruntime-trt", "fp32"), ("torch", "fp16"), ("onnxruntime", "fp16")]:
        r = got[key]
        assert r.status == "unsupported" and r.note and r.ms_median is None, key
    assert "cuda" in got[("tensorrt", "fp32")].note.lower()

    rows = _run(tmp_path / "budget", cache, models=["asapnet-tiny"], res=["32x64"], backends=["torch"], budget=1e-6)
    assert rows[0].status == "budget" and "budget" in rows[0].note


def test_resolution_checks():
    # no model takes 100x7: the whole run is refused
    with pytest.raises(UserError, match="100x7"):
        S.plan_models(["asapnet-tiny"], [(100, 7)])
    if "spade-tiny" in TINY:
        plans = S.plan_models(["asapnet-tiny", "spade-tiny"], [(40, 40)])
        assert [bool(p.problem) for p in plans] == [False, True]


def test_ctrl_c_keeps_finished_rows(tmp_path, cache, monkeypatch):
    real = S.measure_cell
    calls = []

    def interrupt(row, cell, cfg, on_phase=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(row, cell, cfg, on_phase)

    monkeypatch.setattr(S, "measure_cell", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, cache, models=["asapnet-tiny"], res=["32x64", "64x64"], backends=["torch"])
    rows = read_csv(tmp_path / "bench.csv")
    assert [(r.res, r.status) for r in rows] == [("32x64", "ok")]
    assert all((tmp_path / f).is_file() for f in ("bench.md", "bench.json", "latency_vs_megapixels.png"))


def test_checkpoint_fixes_the_configuration(tmp_path, cache):
    import torch

    from asapbench.checkpoint import save_generator
    from asapbench.registry import create_generator

    torch.manual_seed(3)
    g = create_generator("asapnet-tiny", "tiny-facades")  # S=16, 5 labels
    ckpt = save_generator(g, tmp_path / "g.pth")
    rows = _run(tmp_path / "out", cache, models=["asapnet-tiny"], res=["32x64", "64x64"], backends=["torch"],
                checkpoint=[f"asapnet-tiny={ckpt}"])
    assert [r.status for r in rows] == ["ok", "ok"]
    for r in rows:
        # the checkpoint's preset at every resolution, not the paper's per-resolution configuration
        assert r.preset == "tiny-facades" and r.overrides == "" and r.checkpoint == str(ckpt)
        assert r.params == sum(p.numel() for p in g.parameters())
