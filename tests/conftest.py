"""Shared test helpers: where ../shared is, and markers that skip without GPU / TensorRT."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("MPLBACKEND", "Agg")
# `run`'s peak GEMM at 256^3 instead of 2048^3 (tests check the records, not the machine's peak; CLI subprocesses inherit it)
os.environ.setdefault("ASAPBENCH_PEAK_GEMM", "256")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when that folder is absent (fresh clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (../shared is not next to this checkout)")
    return p


def assert_one_line_error(r, *needles: str) -> None:
    """A CLI run that failed on bad input: exit 2, one non-empty stderr line ``asapbench: error: ...``
    holding every needle, and no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("asapbench: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: small CPU convolutions only lose from threading on a
    shared 2-core machine, and training runs stay deterministic."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    try:
        import tensorrt  # noqa: F401

        has_trt, trt_reason = True, ""
    except Exception as exc:
        has_trt, trt_reason = False, f"tensorrt is not importable ({type(exc).__name__}); install asapbench[trt] on a machine with an NVIDIA GPU"
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch"))
        if "trt" in item.keywords:
            if not has_trt:
                item.add_marker(pytest.mark.skip(reason=trt_reason))
            elif not has_gpu:
                item.add_marker(pytest.mark.skip(reason="TensorRT needs a CUDA GPU; none is visible to torch"))


@pytest.fixture(scope="session")
def tiny_asapnet_export(tmp_path_factory):
    """(model, ONNX path): asapnet-tiny at 64x128, weights spread as in `run`, exported fp32 without the gate
    (tests that judge the gate itself start from it)."""
    pytest.importorskip("onnxruntime")
    from asapbench.weights import realistic_model
    from exporters.onnx_export import export_onnx

    g = realistic_model("asapnet-tiny", 64, 128, seed=0)
    r = export_onnx(g, 64, 128, tmp_path_factory.mktemp("tiny-asapnet-onnx"), "fp32", check=False)
    return g, r.onnx_path
