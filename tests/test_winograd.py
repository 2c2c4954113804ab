"""Winograd F(2x2,3x3) / F(4x4,3x3) inference form of ASAP-Net's low-res 3x3 stride-1 convs (``lowres_conv``).

Errors are judged against float64 references with bounds derived from fp32 rounding (unit roundoff
2^-24, number of terms summed, the transforms' amplification), not against numbers of one CPU.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from asapbench import create_generator
from asapbench.counting import count_macs
from asapbench.inputs import example_input
from asapbench.models.asapnet import _Block, winograd_conv3x3, winograd_matrices, winograd_weight

U32 = 2.0**-24


def _amplification(m: int) -> float:
    """Worst-case growth of rounding errors through B^T . B, G . G^T and A^T . A (row abs-sums squared)."""
    bt, g, at = winograd_matrices(m)
    return float(bt.abs().sum(1).max() ** 2 * g.abs().sum(1).max() ** 2 * at.abs().sum(1).max() ** 2)


def _fp32_bound(x: torch.Tensor, w: torch.Tensor, padding: int, m: int) -> torch.Tensor:
    """|fp32 Winograd - exact| <= amplification * (terms) * u * conv(|x|, |w|) (elementwise)."""
    terms = 9 * x.shape[1] + 2 * (m + 2)
    absconv = F.conv2d(x.abs().double(), w.abs().double(), padding=padding)
    return _amplification(m) * terms * U32 * absconv + 1e-30


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("pad", ["zero", "reflect"])
@pytest.mark.parametrize("hw", [(16, 32), (7, 9), (6, 5), (1, 2)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_winograd_conv_equals_direct_conv(m, pad, hw):
    """Any grid size (tiles not dividing it), zero or reflection padding, batch 3, against float64."""
    h, w = hw
    g = torch.Generator().manual_seed(h * 100 + w + m)
    x = torch.randn(3, 12, h, w, generator=g)
    wt = torch.randn(10, 12, 3, 3, generator=g) / 6
    if pad == "reflect":
        if min(h, w) < 2:
            pytest.skip("reflection padding needs 2 pixels")
        x, p = F.pad(x, (1, 1, 1, 1), mode="reflect"), 0
    else:
        p = 1
    ref = F.conv2d(x.double(), wt.double(), padding=p)
    # float64: the algorithm itself is exact (up to float64 rounding)
    got64 = winograd_conv3x3(x.double(), winograd_weight(wt.double(), m), m, p)
    assert got64.shape == ref.shape
    assert (got64 - ref).abs().max() <= 1e-12 * (1 + ref.abs().max())
    # float32: within the rounding bound, elementwise
    got = winograd_conv3x3(x, winograd_weight(wt, m), m, p)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    err = (got.double() - ref).abs()
    assert bool((err <= _fp32_bound(x, wt, p, m)).all()), float((err / _fp32_bound(x, wt, p, m)).max())


@pytest.mark.parametrize("reflection_pad", [False, True])
def test_block_forms_equal_and_cache_follows_weight_changes(reflection_pad):
    """A 1024-style block (conv + IN + ReLU) in both forms; an in-place weight change (as
    spread_for_resolution makes after prepare_for_inference) is picked up, not served from the cache."""
    torch.manual_seed(0)
    blk = _Block(16, reflection_pad).double().eval()
    x = torch.randn(2, 16, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        direct = blk(x)
        blk.winograd_tile = 2
        assert blk.uses_winograd(x)
        assert (blk(x) - direct).abs().max() < 1e-12
        blk.conv.weight.mul_(-0.5)  # in place: same storage, new version
        direct2 = blk.conv_block(x)
        assert (blk(x) - direct2).abs().max() < 1e-12
        assert (direct2 - direct).abs().max() > 0.1
        blk.load_state_dict({k: v * 3 for k, v in blk.state_dict().items()})
        assert (blk(x) - blk.conv_block(x)).abs().max() < 1e-12


def _tiny(preset, form, seed=0):
    torch.manual_seed(seed)
    return create_generator("asapnet-tiny", preset, lowres_conv=form)


@pytest.mark.parametrize("preset,h,w", [("tiny", 40, 72), ("tiny-facades", 64, 48)])
def test_tiny_model_equal_both_ways(preset, h, w):
    """Whole asapnet-tiny (zero padding; reflection padding), batch 2, grid not a multiple of the tile."""
    direct = _tiny(preset, "direct").prepare_for_inference()
    for form in ("winograd", "winograd4"):
        wino = _tiny(preset, form).prepare_for_inference()
        wino.load_state_dict(direct.state_dict())
        x = example_input(direct, 2, h, w, seed=3)
        with torch.no_grad():
            d64 = copy.deepcopy(direct).double()(x.double())
            w64 = copy.deepcopy(wino).double()(x.double())
            assert (w64 - d64).abs().max() < 1e-10
            d32, w32 = direct(x).double(), wino(x).double()
        # fp32 against the exact forward: within the project's fp32 parity criterion of the direct form
        from exporters.validate import drift_bound

        assert float((w32 - d64).abs().max()) <= drift_bound(float((d32 - d64).abs().max()))
        assert float(d64.std()) > 0.05  # a real output, not a saturated or collapsed one


def test_state_dict_macs_and_training_unchanged():
    direct, wino = _tiny("tiny", "direct"), _tiny("tiny", "winograd")
    assert wino.lowres_conv == "winograd" and create_generator("asapnet-tiny").lowres_conv == "winograd"
    wino.prepare_for_inference()
    x = example_input(wino, 1, 32, 64, seed=1)
    with torch.no_grad():
        wino(x)
    sd_d, sd_w = direct.state_dict(), wino.state_dict()
    assert [(k, v.shape) for k, v in sd_d.items()] == [(k, v.shape) for k, v in sd_w.items()]
    direct.load_state_dict(sd_w, strict=True)
    # MAC counting (meta device) counts the direct convolutions
    assert count_macs(wino, 32, 64) == count_macs(direct, 32, 64)
    # training: the direct conv, differentiable
    wino.train()
    blocks = [b for b in wino.modules() if isinstance(b, _Block)]
    assert blocks and not any(b.uses_winograd(x) for b in blocks)
    wino(x).square().mean().backward()
    assert all(b.conv.weight.grad is not None and b.conv.weight.grad.abs().sum() > 0 for b in blocks)
    with pytest.raises(ValueError, match="lowres_conv"):
        create_generator("asapnet-tiny", lowres_conv="fft")


def test_onnx_export_of_winograd_form_passes_gate(tmp_path):
    """The exported Winograd graph: no Conv for the blocks, plain ops, passes the fp32 parity gate."""
    import onnx

    from exporters.onnx_export import export_onnx

    counts = {}
    for form in ("direct", "winograd"):
        torch.manual_seed(0)
        g = create_generator("asapnet-tiny", lowres_conv=form)
        r = export_onnx(g, 32, 64, tmp_path / form, precision="fp32")
        par = json.loads(r.sidecar_path.read_text())["parity"]
        assert par["passed"] and not par["degenerate"], par
        assert par["max_abs_err"] <= 1e-4
        ops = [n.op_type for n in onnx.load(str(r.onnx_path)).graph.node]
        counts[form] = ops.count("Conv")
        assert not {"Loop", "If", "Scan"} & set(ops)
    # lr_depth = 2 blocks leave the graph as Winograd products
    assert counts["winograd"] == counts["direct"] - 2
