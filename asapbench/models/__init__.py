"""Generators that need only torch; importing this registers ASAP-Net."""

from asapbench.models.asapnet import ASAPNetGenerator
from asapbench.models.base import Generator
from asapbench.modelspec import ModelSpec, Preset, register_model

_CITY = dict(label_nc=35, instance_edge=True, lr_instance=True, reflection_pad=False)
_FACADES = dict(label_nc=13, instance_edge=False, lr_instance=False, reflection_pad=True)


def _pow2_near(n: int, least: int) -> list[int]:
    """The powers of two (times ``least``) just below and above ``n``."""
    lo = least
    while lo * 2 <= n:
        lo *= 2
    return [lo] if lo >= n else [lo, lo * 2]


def _asapnet_configure(height: int, width: int, name: str = "asapnet", ratio: int = 16, floor: int = 16):
    """The paper's rule: S = H / 16; Cityscapes labels for 2:1 inputs, Facades labels otherwise.

    S is the tile size of the pixelwise MLPs and must be a power of two, so without a preset the height
    must be 16 x a power of two and the width a multiple of S; anything else is refused in the user's terms.
    """
    from asapbench.errors import UserError

    scale = max(floor, height // ratio)
    if height // ratio > floor and (height % ratio or scale & (scale - 1)):
        near = []
        for h in _pow2_near(height, ratio * floor):
            s = max(floor, h // ratio)
            w = max(s, round(width * h / height / s) * s)
            near.append(f"{h}x{w} (S={s})")
        raise UserError(
            f"{name} cannot take {height}x{width} with the paper's configuration: the tile size of its pixelwise "
            f"MLPs is S = H/{ratio} (at least {floor}), which must be a power of two, and W a multiple of S; nearest valid "
            f"sizes: {' or '.join(near)}; or keep one preset's tile size with --preset (then H and W must be "
            f"multiples of its S); check a size with `asapbench info --model {name} --res HxW`")
    base = "cityscapes" if width == 2 * height else "facades512"
    return base, {"scale": scale}


ASAPNET_PRESETS = {
    "cityscapes": Preset("cityscapes", dict(_CITY, scale=16), (256, 512), "asapnet_cityscapes.json",
                         "Cityscapes 256x512 (crop 512): S=16, S1=1, 35 labels + instance edge, zero padding"),
    "cityscapes-1024": Preset("cityscapes-1024", dict(_CITY, scale=32), (512, 1024), "asapnet_cityscapes_crop1024.json",
                              "Cityscapes 512x1024 (crop 1024): S=32, S1=2"),
    "facades512": Preset("facades512", dict(_FACADES, scale=32), (512, 512), "asapnet_facades512.json",
                         "CMP Facades 512x512: S=32, S1=2, 13 labels, reflection padding"),
    "facades1024": Preset("facades1024", dict(_FACADES, scale=64), (1024, 1024), "asapnet_facades1024.json",
                          "CMP Facades 1024x1024: S=64, S1=4"),
    "facades2048": Preset("facades2048", dict(_FACADES, scale=128), (2048, 2048), "asapnet_facades2048.json",
                          "CMP Facades 2048x2048: S=128, S1=8"),
}

register_model(ModelSpec(
    name="asapnet",
    builder=ASAPNetGenerator,
    presets=ASAPNET_PRESETS,
    default_preset="cityscapes",
    description="ASAP-Net: low-res conv stream predicting per-tile pixelwise MLPs (Shaham et al. 2021)",
    configure=_asapnet_configure,
))

_TINY = dict(ds_factor=4, lr_width=8, lr_max_width=16, lr_depth=2, hr_width=8, hr_depth=5)


def _asapnet_tiny_configure(height: int, width: int):
    _, overrides = _asapnet_configure(height, width, name="asapnet-tiny", ratio=8, floor=8)
    return "tiny", overrides


register_model(ModelSpec(
    name="asapnet-tiny",
    builder=ASAPNetGenerator,
    presets={
        "tiny": Preset("tiny", dict(_TINY, label_nc=6, instance_edge=True, lr_instance=True, scale=8,
                                    reflection_pad=False), (32, 64), None,
                       "test variant: 6 labels + edge, S=8 (S1=2, S2=4), widths 8/16"),
        "tiny-facades": Preset("tiny-facades", dict(_TINY, label_nc=5, instance_edge=False, lr_instance=False,
                                                    scale=16, reflection_pad=True), (64, 64), None,
                               "test variant: 5 labels, S=16 (S1=4), reflection padding"),
    },
    default_preset="tiny",
    description="tiny ASAP-Net for tests (same code path, small widths)",
    tiny=True,
    family="asapnet",
    configure=_asapnet_tiny_configure,
))

__all__ = ["ASAPNetGenerator", "Generator"]
