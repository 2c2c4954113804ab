"""The fp32 parity gate means the same at every size: past 1e-4 of PyTorch fp32, an export is judged by its
error against a float64 forward, relative to PyTorch fp32's own (docs/export.md, "Parity gate")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from asapbench.registry import build_for_resolution  # noqa: E402
from exporters import validate  # noqa: E402


def test_within_1e4_of_torch_needs_no_float64_forward(tiny_asapnet_export):
    g, path = tiny_asapnet_export
    par = validate.check_parity(path, g, validate.parity_inputs(g, 64, 128), "fp32")
    assert par["passed"] and par["max_abs_err"] <= 1e-4
    assert par["drift"] is None and all(s["drift"] is None for s in par["samples"])


def test_past_the_shortcut_the_float64_drift_decides(tiny_asapnet_export, monkeypatch):
    """With the shortcut made impossible, the real export is judged against float64: it is about as
    accurate as PyTorch fp32, so it passes, and both numbers are recorded."""
    g, path = tiny_asapnet_export
    monkeypatch.setitem(validate.PARITY_CRITERIA, "fp32", {"max_abs_err": 1e-12, "drift_factor": 4.0})
    par = validate.check_parity(path, g, validate.parity_inputs(g, 64, 128), "fp32")
    d = par["drift"]
    assert d is not None and d["torch_vs_float64"] > 0 and d["onnx_vs_float64"] > 0
    assert d["onnx_vs_float64"] <= d["bound"] == pytest.approx(4.0 * d["torch_vs_float64"] + 1e-12)
    assert par["passed"], par["failures"]


def test_an_output_far_from_float64_fails():
    """An export 1e-3 off (10x the floor, ~100x PyTorch's own drift) fails with both numbers named."""
    g = build_for_resolution("asapnet-tiny", 64, 128, seed=0).eval()
    x = validate.parity_inputs(g, 64, 128, count=1)[0][1]
    with torch.inference_mode():
        ref = g(x).numpy()
    bad = ref + np.float32(1e-3)
    d = validate.float64_drift(g, x, ref, bad)
    assert d["onnx_vs_float64"] > d["bound"]
    worst = {**validate.compare(ref, bad), "drift": d}
    fails = validate._gate("fp32", worst)
    assert fails and "float64" in fails[0]


def test_a_constant_reference_fails_the_gate(tmp_path):
    """All-zero weights: PyTorch and the export both give 0 everywhere -- equal, and meaningless. The gate fails
    (before, it passed with max |err| 0)."""
    from exporters.onnx_export import export_onnx

    g = build_for_resolution("asapnet-tiny", 64, 128, seed=0).prepare_for_inference()
    with torch.no_grad():
        for p in g.parameters():
            p.zero_()
    path = export_onnx(g, 64, 128, tmp_path, "fp32", check=False).onnx_path
    par = validate.check_parity(path, g, validate.parity_inputs(g, 64, 128), "fp32")
    assert par["max_abs_err"] == 0.0  # the export does match PyTorch
    assert not par["passed"] and par["degenerate"]
    assert any("degenerate PyTorch reference" in f and "constant" in f for f in par["failures"]), par["failures"]
    with pytest.raises(validate.ParityError, match="degenerate PyTorch reference"):
        validate.raise_if_failed(par, "asapnet-tiny 64x128")


def test_a_nonfinite_reference_fails_the_gate_whatever_the_export_gives():
    """A reference with NaN: every difference is NaN and no threshold compares true; the gate must still fail."""
    ref = np.linspace(-0.9, 0.9, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    ref[0, 0, 0, 0] = np.nan
    got = np.nan_to_num(ref)
    for precision in ("fp32", "fp16"):
        v = validate.judge_outputs(ref, got, precision)
        assert not v["passed"] and v["degenerate"], v
        assert any("1 of 384 output values are NaN/Inf" in f for f in v["failures"]), v["failures"]
    ok = validate.judge_outputs(got, got, "fp32")  # the same array without the NaN passes
    assert ok["passed"] and not ok["degenerate"], ok
