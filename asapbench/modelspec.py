"""The model store: what a generator entry is (:class:`ModelSpec`, :class:`Preset`) and where entries go
(:func:`register_model`). A leaf: it imports no model. Generators register here when their module is
imported (``asapbench.models``, ``baselines``); :mod:`asapbench.registry` imports those modules and looks
entries up. A name registers once: a second entry under the same name raises (as timm and torchvision do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One configuration of a generator (usually the one an official checkpoint was trained with)."""

    name: str
    kwargs: dict[str, Any]
    resolution: tuple[int, int]  # (H, W) the preset was trained / is timed at by the paper
    manifest: str | None = None  # file name of the official state-dict manifest in asapbench/fixtures (docs/generators.md, "Sources")
    description: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]
    presets: dict[str, Preset]
    default_preset: str
    description: str = ""
    tiny: bool = False  # a small test variant
    family: str = ""  # the full model a tiny variant stands in for
    input_kind: str = "labels"  # "labels" (one-hot + instance edge) or "image" (pix2pix RGB)
    #: (H, W) -> (preset, overrides): how the paper configures this model for a resolution that no
    #: preset was trained at (a preset trained at exactly H x W always wins). None: the default preset.
    configure: Callable[[int, int], tuple[str, dict[str, Any]]] | None = None


#: name -> entry, in registration order
MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model (called at import time by asapbench.models and baselines); a name already taken raises."""
    if spec.name in MODELS:
        raise ValueError(f"a model named {spec.name!r} is already registered; choose another name")
    if spec.default_preset not in spec.presets:
        raise ValueError(f"{spec.name}: default preset {spec.default_preset!r} is not among its presets")
    MODELS[spec.name] = spec
    return spec
