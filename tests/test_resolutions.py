"""The paper's whole range, 256x512 to 2048x2048, for every full model: `info` answers, and the sizes that
export and run use for realistic random weights are valid (cheap: meta device, no weights)."""

from __future__ import annotations

import pytest
import torch

from asapbench.errors import UserError
from asapbench.registry import build_for_resolution
from asapbench.resolution import PAPER_RESOLUTIONS
from asapbench.weights import calibration_size

FULL = ["asapnet", "pix2pixhd", "pix2pixhd-local", "spade", "pix2pix"]


def test_paper_resolutions_cover_256x512_to_2048x2048():
    assert PAPER_RESOLUTIONS[0] == (256, 512) and PAPER_RESOLUTIONS[-1] == (2048, 2048)
    assert (1024, 2048) in PAPER_RESOLUTIONS and len(PAPER_RESOLUTIONS) == 6


@pytest.mark.parametrize("name", FULL)
@pytest.mark.parametrize("hw", PAPER_RESOLUTIONS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_every_model_takes_every_paper_resolution(name, hw):
    """info's path (meta build, size check, MACs) works, and the calibration size used by export/run to
    spread random weights is valid with no 1x1 map under instance normalisation (a meta forward runs the
    same shape checks as a real one)."""
    from asapbench.commands.models_info import model_info

    info = model_info(name, res=f"{hw[0]}x{hw[1]}")
    assert info["macs"] > 0 and (info["height"], info["width"]) == hw
    g = build_for_resolution(name, *hw, device="meta").eval()
    ch, cw = calibration_size(g, *hw)
    g.check_input_size(ch, cw)
    with torch.no_grad():
        y = g(torch.empty(1, g.input_nc, ch, cw, device="meta"))
    assert tuple(y.shape) == (1, 3, ch, cw)


def test_calibration_size_keeps_two_tiles():
    g = build_for_resolution("asapnet", 2048, 2048, device="meta")  # facades2048: S = 128
    ch, cw = calibration_size(g, 2048, 2048)
    assert (ch // g.scale) * (cw // g.scale) >= 2 and ch * cw <= 2048 * 2048


def test_a_size_the_architecture_cannot_take_is_one_line():
    with pytest.raises(UserError) as e:
        build_for_resolution("pix2pixhd", 1000, 1000, device="meta")
    assert "\n" not in str(e.value) and "992x992" in str(e.value)
