"""Random weights that behave like trained ones: BatchNorm statistics from data and an output that is
neither a saturated nor a collapsed tanh.

Default PyTorch initialisation saturates most of these generators (a random ASAP-Net cityscapes has
91% of its pixels at |y| > 0.99) and drives a random SPADE's activations to ~1e16, which makes any
parity comparison meaningless and fp16 overflow. A run's cost does not depend on the values, so
``asapbench run`` (every backend, torch included), ``asapbench export``, ``asapbench profile``, the tests and
the scripts all build through :func:`realistic_model` (one recipe, :data:`SPREAD_STEPS`), so an export made by
one is reused by the others (its cache key holds ``weights_sha256``); never on a checkpoint. See docs/export.md.
"""

from __future__ import annotations

from typing import Any

import torch

#: bisection steps of the last layer's scale in :func:`spread_for_resolution`: the one recipe every caller uses
SPREAD_STEPS = 4

# --------------------------------------------------------------------------------------------
def _last_weighted_module(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The module with a ``weight`` parameter that runs last in ``model(x)`` (found with hooks)."""
    order: list[torch.nn.Module] = []
    hooks = []
    for mod in model.modules():
        if isinstance(getattr(mod, "weight", None), torch.nn.Parameter) and mod.weight.dim() > 1:
            hooks.append(mod.register_forward_hook(lambda m, i, o: order.append(m)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("the model has no weighted layer to rescale")
    return order[-1]


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Set the running statistics of every BatchNorm to those of ``model(x)``; returns how many.

    A freshly initialised BatchNorm has mean 0 / variance 1, so in eval mode it normalises nothing
    and a random SPADE's activations grow to ~1e16 (fp16 overflows, tanh saturates). A trained model
    has statistics of real data; this gives random weights the same (one pass, cumulative average).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            model(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
            m.eval()
    return len(bns)


def spread_random_weights(
    model: torch.nn.Module, x: torch.Tensor, target_std: float = 0.4, steps: int = 10
) -> float:
    """Rescale the last weighted layer of a *randomly initialised* generator so that its output on
    ``x`` has std ~ ``target_std`` instead of a saturated (+-1) or collapsed (0) tanh.

    Default PyTorch initialisation saturates most of these generators (e.g. random ASAP-Net
    cityscapes: 91% of pixels at |y| > 0.99), which makes any parity comparison meaningless.
    BatchNorm statistics are first set from ``x`` (:func:`calibrate_batchnorm`). The module is
    modified in place (after :meth:`prepare_for_inference`); returns the factor applied.
    Use only for random weights: never on a checkpoint.
    """
    model.prepare_for_inference()
    calibrate_batchnorm(model, x)
    layer = _last_weighted_module(model, x)
    w0 = layer.weight.detach().clone()
    b0 = layer.bias.detach().clone() if getattr(layer, "bias", None) is not None else None

    def std_at(a: float) -> float:
        with torch.no_grad():
            layer.weight.copy_(w0 * a)
            if b0 is not None:
                layer.bias.copy_(b0 * a)
        with torch.inference_mode():
            return float(model(x).float().std())

    s = std_at(1.0)
    if abs(s - target_std) < 0.05 * target_std:
        return 1.0
    # bracket log2(a) with unit steps, then bisect; the output spread grows with the last layer's scale
    lo = hi = None
    cur = 0
    down = s > target_std
    for _ in range(14):
        prev, cur = cur, cur + (-1 if down else 1)
        s = std_at(2.0**cur)
        if down and s <= target_std:
            lo, hi = cur, prev
            break
        if not down and s >= target_std:
            lo, hi = prev, cur
            break
    if lo is None:  # no scale reaches the target: leave the weights as they were
        std_at(1.0)
        return 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if std_at(2.0**mid) > target_std:
            hi = mid
        else:
            lo = mid
    a = 2.0 ** ((lo + hi) / 2)
    std_at(a)
    return a


def spread_for_resolution(model: torch.nn.Module, height: int, width: int, seed: int) -> float:
    """:func:`spread_random_weights` on a realistic label map of the aspect of H x W (at most 128x256
    pixels, :func:`calibration_size`), recording what was done in ``model.weights_note`` (sidecars and
    benchmark rows carry it). For random weights only; returns the factor applied to the last layer."""
    from asapbench.inputs import example_input

    ch, cw = calibration_size(model, height, width)
    model.check_input_size(ch, cw)
    factor = spread_random_weights(model, example_input(model, 1, ch, cw, seed=seed), steps=SPREAD_STEPS)
    model.weights_note = (
        f"random init (torch.manual_seed({seed})), BatchNorm statistics calibrated and the last weighted layer "
        f"scaled by {factor:.4g} on a {ch}x{cw} label map so the output std is ~0.4 instead of a saturated tanh"
    )
    return factor


def calibration_size(model, height: int, width: int, max_area: int = 128 * 256) -> tuple[int, int]:
    """A smaller valid input size with the aspect of H x W: halved while above ``max_area`` and while the
    model's own size rule (:meth:`check_input_size`) accepts the half (so ASAP-Net keeps two tiles: one
    tile leaves its deepest maps at 1x1, where instance normalisation is undefined)."""
    from asapbench.errors import UserError

    def ok(a: int, b: int) -> bool:
        try:
            model.check_input_size(a, b)
        except UserError:
            return False
        return True

    h, w = height, width
    while h * w > max_area and h % 2 == 0 and w % 2 == 0 and ok(h // 2, w // 2):
        h, w = h // 2, w // 2
    return h, w


def realistic_model(name: str, height: int, width: int, preset: str | None = None, seed: int = 0,
                    **overrides: Any) -> torch.nn.Module:
    """``name`` configured for H x W (:func:`asapbench.registry.build_for_resolution`), seeded random
    weights made realistic here, ready for inference: the one builder of the model `export`, `run` and
    `profile` use (and the tests and scripts), so that their exports share one cache key."""
    from asapbench.registry import build_for_resolution

    model = build_for_resolution(name, height, width, preset, seed=seed, **overrides)
    model.prepare_for_inference()
    spread_for_resolution(model, height, width, seed)
    return model
