"""Tiny sweeps on a CUDA GPU: torch fp32/fp16 (with and without CUDA graphs), onnxruntime CUDA and
TensorRT where installed (else their rows must say `unsupported`, never a CPU timing)."""

from __future__ import annotations

import pytest

from asapbench.bench import backends as B
from asapbench.commands.run import run_benchmark

pytestmark = pytest.mark.gpu

FAST = dict(warmup=2, iters=5, min_seconds=0.0, e2e_iters=2, export_check=True, progress=False, device="cuda")


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tiny_cuda_sweep(tmp_path, cuda_graph):
    rows = run_benchmark(out=tmp_path / "out", cache_dir=tmp_path / "cache", models=["asapnet-tiny"], res=["32x64"],
                         backends=["torch", "onnxruntime", "tensorrt"], precision=["fp32", "fp16"],
                         cuda_graph=cuda_graph, **FAST)
    got = {(r.backend, r.precision): r for r in rows}
    for prec in ("fp32", "fp16"):
        r = got[("torch", prec)]
        assert r.status == "ok", r.note
        assert r.device == "cuda" and r.mem_kind == "cuda_max_allocated" and r.peak_mem_mib > 0
        assert r.cuda_graph is cuda_graph and r.e2e_ms_median > 0
    ort_ok = B.unsupported_reason("onnxruntime", "cuda", "fp32") is None
    trt_ok = B.unsupported_reason("tensorrt", "cuda", "fp32") is None
    for backend, ok in (("onnxruntime", ort_ok), ("tensorrt", trt_ok)):
        for prec in ("fp32", "fp16"):
            r = got[(backend, prec)]
            if ok:
                assert r.status == "ok", r.note
                assert r.mem_kind == "cuda_device_delta"
            else:
                assert r.status == "unsupported" and r.ms_median is None and r.note
    if ort_ok:
        assert got[("onnxruntime", "fp32")].provider == "CUDAExecutionProvider"


def test_default_backends_on_cuda_include_torch_and_only_what_loads(tmp_path):
    """Behaviour, not the table's own filter: a sweep with --backends left out times every backend it picks
    (torch among them), and each default-set backend it leaves out cannot time a cell here either."""
    common = dict(cache_dir=tmp_path / "cache", models=["asapnet-tiny"], res=["32x64"], precision=["fp32"], **FAST)
    rows = run_benchmark(out=tmp_path / "defaults", **common)
    picked = [r.backend for r in rows]
    assert picked[0] == "torch"
    for r in rows:
        assert r.status == "ok", (r.backend, r.note)
    left_out = [n for n, b in B.BACKENDS.items() if b.in_default and n not in picked]
    if left_out:
        for r in run_benchmark(out=tmp_path / "left-out", backends=left_out, **common):
            assert r.status == "unsupported" and r.ms_median is None and r.note, (r.backend, r.status, r.note)
