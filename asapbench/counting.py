"""Parameter and MAC counting.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (dispatcher level, so functional calls
and ``torch.matmul`` are seen: hook-based counters would miss ASAP-Net's whole pixelwise stream),
divided by 2 (one multiply-add = 2 FLOPs). What is counted: convolutions (incl. transposed and
depthwise), linear layers and matrix products. What is not: normalisation, activations, additions,
interpolation, padding. The forward runs on the meta device (shapes only, no data), so a
2048x2048 SPADE count takes well under a second.
"""

from __future__ import annotations

from typing import Any

import torch

MAC_CONVENTION = (
    "MACs = FLOPs/2 from torch.utils.flop_counter.FlopCounterMode: conv, conv-transpose, linear and "
    "matmul multiply-adds; norms, activations, additions, resizing and padding are not counted"
)


def count_params(model: torch.nn.Module) -> int:
    """Number of learnable parameters (buffers such as BN statistics or spectral-norm u/v excluded)."""
    return sum(p.numel() for p in model.parameters())


def _meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same generator on the meta device (no weights allocated), ready for inference: the model
    itself when it was built there, else a rebuild from the registry (or a structural copy)."""
    if all(t.is_meta for t in model.parameters()):
        twin = model
    elif getattr(model, "model_name", ""):  # a registry Generator (plain nn.Modules are counted too)
        from asapbench.registry import create_generator

        with torch.device("meta"):
            twin = create_generator(model.model_name, model.preset, **model.config)
    else:  # not built through the registry: copy the structure instead
        import copy

        twin = copy.deepcopy(model).to("meta")
    twin.eval()
    prep = getattr(twin, "prepare_for_inference", None)
    if prep is not None:
        prep()
    return twin


def _flops(fn, *args) -> tuple[int, dict[str, int]]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args)
    per_module = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def _stages(per_module: dict[str, int], total: int) -> dict[str, int]:
    """Per-stage MACs: the top-level children, or the children of a lone top-level Sequential."""
    depth1 = {k.split(".", 1)[1]: v for k, v in per_module.items() if k.count(".") == 1}
    if len(depth1) == 1:
        (only,) = depth1
        deeper = {k.split(".", 2)[2]: v for k, v in per_module.items() if k.count(".") == 2 and k.split(".")[1] == only}
        if deeper:
            depth1 = {f"{only}.{k}": v for k, v in deeper.items()}
    out = {k: v // 2 for k, v in depth1.items() if v}
    rest = total - 2 * sum(out.values())
    if rest > 0:
        out["(functional)"] = rest // 2
    return out


def count_macs(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> dict[str, Any]:
    """Params and MACs of ``model`` on a ``batch x input_nc x H x W`` input, without real data.

    Returns a dict with ``params``, ``macs`` (total), ``stages`` (MACs per top-level stage) and, for
    ASAP-Net, ``streams`` = {"lowres": ..., "pixelwise": ...}, plus ``convention``.
    """
    check = getattr(model, "check_input_size", None)
    if check is not None:
        check(height, width)
    twin = _meta_twin(model)
    x = torch.empty(batch, twin.input_nc, height, width, device="meta")
    total, per_module = _flops(twin, x)
    out: dict[str, Any] = {
        "height": height,
        "width": width,
        "batch": batch,
        "params": count_params(model),
        "macs": total // 2,
        "stages": _stages(per_module, total),
        "convention": MAC_CONVENTION,
    }
    if hasattr(twin, "lowres") and hasattr(twin, "pixelwise"):
        lr_flops, _ = _flops(twin.lowres, x)
        out["streams"] = {"lowres": lr_flops // 2, "pixelwise": (total - lr_flops) // 2}
    return out
