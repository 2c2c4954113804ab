"""Parsing of ``--res`` values: ``1024`` -> 1024x1024, ``256x512`` -> H x W, ``paper`` -> the paper's list."""

from __future__ import annotations

import re
from collections.abc import Iterable

from asapbench.bounds import MAX_SIDE
from asapbench.errors import UserError

#: The resolutions the paper and its supplement time (H, W), smallest first.
PAPER_RESOLUTIONS: list[tuple[int, int]] = [(256, 512), (512, 512), (512, 1024), (1024, 1024), (1024, 2048), (2048, 2048)]

_RES = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024"`` -> (1024, 1024); ``"256x512"`` -> (256, 512) (height x width); each side 1..MAX_SIDE."""
    m = _RES.match(str(text))
    if not m:
        raise UserError(f"cannot read resolution {text!r}; write HEIGHTxWIDTH (e.g. 256x512) or one number for a square (e.g. 1024)")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if h <= 0 or w <= 0:
        raise UserError(f"resolution {text!r} must be positive; e.g. 256x512")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise UserError(f"resolution {text!r} is out of range: height and width must lie in [1, {MAX_SIDE}] pixels; "
                        "e.g. 256x512")
    return h, w


def parse_resolutions(values: Iterable[str]) -> list[tuple[int, int]]:
    """Parse repeated/comma-separated ``--res`` values; ``paper`` expands to :data:`PAPER_RESOLUTIONS`."""
    out: list[tuple[int, int]] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            items = PAPER_RESOLUTIONS if part.lower() == "paper" else [parse_resolution(part)]
            for r in items:
                if r not in out:
                    out.append(r)
    if not out:
        raise UserError("no resolution given; pass e.g. --res 256x512 or --res paper")
    return out


def format_resolution(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"
