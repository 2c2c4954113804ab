"""Model registry: every generator variant is a named entry with named presets.

``create_generator(name, preset=None, **overrides)`` is the only way to build a generator.
A preset is a set of constructor keyword arguments (the official configuration of one
checkpoint); ``overrides`` replace single keyword arguments. Unknown names, presets or
keyword arguments raise :class:`asapbench.errors.UserError` listing the valid choices.

The entries live in :mod:`asapbench.modelspec` (a leaf the generators register into); this module imports
the generator modules once, at its top, so every lookup sees them all. ``import asapbench`` does not import
it (the package's names are lazy), so it stays torch-free.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from enum import Enum
from typing import Any

import asapbench.models  # noqa: F401  (registers asapnet)
import baselines  # noqa: F401  (registers pix2pixhd, spade, pix2pix)
from asapbench.errors import UserError
from asapbench.modelspec import MODELS, ModelSpec, Preset


def model_names(include_tiny: bool = True) -> list[str]:
    return [n for n, s in MODELS.items() if include_tiny or not s.tiny]


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; an unknown name raises UserError listing the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(
            f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (see `asapbench models`)"
        ) from None


def get_preset(name: str, preset: str | None = None) -> Preset:
    spec = get_spec(name)
    preset = preset or spec.default_preset
    try:
        return spec.presets[preset]
    except KeyError:
        raise UserError(
            f"unknown preset {preset!r} for model {name!r}; choose one of: {', '.join(spec.presets)}"
        ) from None


def list_models(include_tiny: bool = True) -> list[dict[str, Any]]:
    """Names, presets and descriptions of every registered generator."""
    out = []
    for n in model_names(include_tiny):
        s = MODELS[n]
        out.append(
            {
                "name": n,
                "presets": list(s.presets),
                "default_preset": s.default_preset,
                "description": s.description,
                "tiny": s.tiny,
                "input_kind": s.input_kind,
            }
        )
    return out


def resolve_kwargs(name: str, preset: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The constructor keyword arguments of ``name``/``preset`` with ``overrides`` applied."""
    spec = get_spec(name)
    p = get_preset(name, preset)
    params = inspect.signature(spec.builder).parameters
    unknown = [k for k in overrides if k not in params]
    if unknown:
        raise UserError(
            f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(params)}"
        )
    kwargs = dict(p.kwargs)
    kwargs.update(overrides)
    return kwargs


def create_generator(name: str, preset: str | None = None, **overrides: Any):
    """Build a generator ``torch.nn.Module`` by registry name and preset.

    The returned module carries ``model_name``, ``preset``, ``config`` (the constructor keyword
    arguments) and ``overrides`` (the keyword arguments given on top of the preset), declared on
    :class:`asapbench.models.base.Generator`, so that checkpoints and exports record what was built.
    """
    spec = get_spec(name)
    p = get_preset(name, preset)
    kwargs = resolve_kwargs(name, p.name, **overrides)
    try:
        model = spec.builder(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name} ({p.name}): invalid configuration: {exc}") from exc
    model.model_name = name
    model.preset = p.name
    model.config = dict(kwargs)
    model.overrides = dict(overrides)
    return model


def configure_for_resolution(name: str, height: int, width: int) -> tuple[str, dict[str, Any]]:
    """(preset, overrides) with which the paper would run ``name`` at H x W.

    ASAP-Net uses S = H/16 (a 16-row parameter grid); the baselines use the preset trained at that
    resolution where one exists. The result still has to pass the generator's size check.
    """
    spec = get_spec(name)
    for p in spec.presets.values():  # the preset trained at exactly H x W, if any
        if p.resolution == (height, width):
            return p.name, {}
    if spec.configure is not None:
        return spec.configure(height, width)
    return spec.default_preset, {}


def build_for_resolution(name: str, height: int, width: int, preset: str | None = None, *,
                         device: str | None = None, seed: int | None = None, **overrides: Any):
    """This model, configured for H x W: the one way info, export, run and train build a generator.

    Without ``preset`` the model gets the paper's configuration for the size
    (:func:`configure_for_resolution`); with one, that preset (and ``overrides``). ``device="meta"``
    builds without weights (planning, MAC counting: milliseconds even at 2048x2048); ``seed`` seeds
    the random initialisation. The size is checked: a size the architecture cannot take raises
    UserError naming valid sizes.
    """
    import contextlib

    import torch

    if preset is None and not overrides:
        preset, overrides = configure_for_resolution(name, height, width)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device) if device else contextlib.nullcontext():
        model = create_generator(name, preset, **overrides)
    model.check_input_size(height, width)
    return model


def _asapnet_choice(flag: str, value: Any, choices: Sequence[str], models: Sequence[str]) -> str | None:
    """An ASAP-Net inference-form option's value (None: the model's default), checked: UserError naming the choices
    for an unknown value, and for a value given when ``models`` (registered names) holds no ASAP-Net model (it would
    change nothing)."""
    if value is None:
        return None
    v = value.value if isinstance(value, Enum) else str(value)
    if v not in choices:
        raise UserError(f"unknown {flag} {v!r}; choose one of: {', '.join(choices)}")
    if models and not any((get_spec(m).family or get_spec(m).name) == "asapnet" for m in models):
        raise UserError(f"{flag} applies to ASAP-Net models only, and {', '.join(models)} has none; "
                        f"leave {flag} out or add --model asapnet")
    return v


def lowres_conv_choice(value: Any, models: Sequence[str] = ()) -> str | None:
    """The --lowres-conv value of export, run and profile (:func:`_asapnet_choice`)."""
    from asapbench.models.asapnet import LOWRES_CONVS

    return _asapnet_choice("--lowres-conv", value, LOWRES_CONVS, models)


def pixelwise_choice(value: Any, models: Sequence[str] = ()) -> str | None:
    """The --pixelwise value of run and profile (:func:`_asapnet_choice`): ASAP-Net's pixelwise formulation. ``fused``
    builds its kernel here (seconds, once per machine), so a missing compiler fails before any work."""
    from asapbench.models.asapnet import PIXELWISE_IMPLS

    v = _asapnet_choice("--pixelwise", value, PIXELWISE_IMPLS, models)
    if v == "fused":
        from asapbench.models.fused_kernel import load

        load()
    return v
