"""pix2pix U-Net generator (Isola et al., CVPR 2017), ``netG unet_256``.

Written from the official forward specification (docs/generators.md, "pix2pix U-Net-256").
State-dict keys and shapes equal junyanz/pytorch-CycleGAN-and-pix2pix's ``UnetGenerator`` (nested
``model.model.1.model.3...``), so official checkpoints load by name. Details:

- every down conv is k4 s2 zero-pad 1 **without bias** (also the outermost one); the up convs are
  ConvTranspose k4 s2 pad 1 without bias, except the outermost one, which has a bias;
- BatchNorm2d (affine, running statistics) after every down conv except the outermost and the
  innermost, and after every up conv except the outermost;
- Dropout(0.5) after the up path of the ``num_downs - 5`` blocks next to the innermost one;
- each inner block returns ``concat([x, up(relu(sub(down(lrelu(x)))))])``, skip first.

The input is the label map rendered as an RGB image in [-1, 1] (``input_kind = "image"``).
**Eval vs train.** The official ``test.py`` runs in train mode unless ``--eval`` is given (batch
statistics and active dropout: random outputs). Here ``eval()`` / :meth:`prepare_for_inference` gives
the reproducible eval-mode network (running statistics, dropout off), which is what we time.
"""

from __future__ import annotations

import torch
from torch import nn

from asapbench.errors import UserError
from asapbench.models.base import Generator
from asapbench.modelspec import ModelSpec, Preset, register_model
from asapbench.stages import StagePlan, with_label_encoding


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down conv, the nested ``submodule``, up conv; inner levels add the skip."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        use_dropout: bool = False,
    ):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        down = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=False)
        if outermost:
            layers = [
                down,
                submodule,
                nn.ReLU(),
                nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=True),
                nn.Tanh(),
            ]
        elif innermost:
            layers = [
                nn.LeakyReLU(0.2),
                down,
                nn.ReLU(),
                nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(outer_nc),
            ]
        else:
            layers = [
                nn.LeakyReLU(0.2),
                down,
                nn.BatchNorm2d(inner_nc),
                submodule,
                nn.ReLU(),
                nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)  # skip first


class UnetGenerator(Generator):
    """pix2pix U-Net: ``num_downs`` stride-2 levels with skip connections (unet_256: 8 levels).

    Args:
        input_nc: input image channels (3: the label map rendered as RGB in [-1, 1]).
        output_nc: output channels.
        num_downs: levels (>= 5); H and W must be multiples of 2**num_downs (256 for unet_256).
        ngf: width of the outermost level (official 64); widths ngf, 2, 4, 8, 8, ... x ngf.
        use_dropout: Dropout(0.5) in the ``num_downs - 5`` blocks next to the innermost (pix2pix default on).
    """

    input_kind = "image"

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64, use_dropout: bool = True):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the U-Net has 5 fixed levels), got {num_downs}")
        self.input_nc = input_nc
        self.label_nc = None
        self.instance_edge = False
        self.num_downs = num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)
        self._init_weights()

    def _init_weights(self, gain: float = 0.02) -> None:
        """The official ``init_type normal``: conv weights ~ N(0, 0.02), BN weights ~ N(1, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, gain)
                nn.init.zeros_(m.bias)

    def size_multiple(self) -> tuple[int, int]:
        m = 2**self.num_downs
        return m, m

    def stage_plan(self) -> StagePlan:
        """The stages ``asapbench profile`` times (:class:`asapbench.stages.StagePlan`)."""
        return with_label_encoding(self, _unet_plan(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, input_nc, H, W) -> (N, 3, H, W)
        x = self.model_input(x)  # label-map input: encoded here (--input labels)
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise UserError(
                f"pix2pix U-Net expects an image [N, {self.input_nc}, H, W] in [-1, 1], got {list(x.shape)}; "
                "render a label map with asapbench.inputs.labels_to_image"
            )
        self.check_input_size(int(x.shape[2]), int(x.shape[3]))
        return self.model(x)


# --------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------
register_model(ModelSpec(
    name="pix2pix",
    builder=UnetGenerator,
    presets={
        "unet256": Preset("unet256", dict(input_nc=3, output_nc=3, num_downs=8, ngf=64, use_dropout=True), (256, 256),
                          "pix2pix_unet256.json",
                          "U-Net-256 (netG unet_256): 8 levels, ngf 64, BatchNorm, dropout; 3-channel label image"),
    },
    default_preset="unet256",
    description="pix2pix U-Net-256 generator (Isola et al. 2017)",
    input_kind="image",
))

register_model(ModelSpec(
    name="pix2pix-tiny",
    builder=UnetGenerator,
    presets={
        "tiny": Preset("tiny", dict(input_nc=3, output_nc=3, num_downs=6, ngf=4, use_dropout=True), (64, 64), None,
                       "test variant: 6 levels (multiples of 64, one dropout block), ngf 4"),
    },
    default_preset="tiny",
    description="tiny pix2pix U-Net for tests (same code path, small widths)",
    tiny=True,
    family="pix2pix",
    input_kind="image",
))


def _unet_plan(m) -> StagePlan:
    blocks, paths = [], []
    b, path = m.model, "model"
    while b is not None:
        blocks.append(b)
        paths.append(path)
        inner = [(i, c) for i, c in enumerate(b.model) if isinstance(c, UnetSkipConnectionBlock)]
        b, path = (inner[0][1], f"{path}.model.{inner[0][0]}") if inner else (None, None)
    splits = []
    scopes: dict[str, str] = {}
    for blk, pth in zip(blocks, paths):
        layers = list(blk.model)
        sub = [i for i, c in enumerate(layers) if isinstance(c, UnetSkipConnectionBlock)]
        if sub:
            lo, hi = sub[0], sub[0] + 1
        else:  # innermost: split after the down convolution
            lo = hi = next(i for i, c in enumerate(layers) if isinstance(c, nn.Conv2d)) + 1
        splits.append((layers[:lo], layers[hi:]))
        scopes[pth] = "up path"  # the skip concatenation of the block
        for i in range(len(layers)):
            if i < lo or i >= hi:
                scopes[f"{pth}.model.{i}"] = "down path" if i < lo else "up path"

    def down(x):
        ins = [x]
        for dn, _ in splits:
            y = ins[-1]
            for layer in dn:
                y = layer(y)
            ins.append(y)
        return ins

    def up(ins):
        y = ins[-1]
        for k in range(len(blocks) - 1, -1, -1):
            for layer in splits[k][1]:
                y = layer(y)
            if not blocks[k].outermost:
                y = torch.cat([ins[k], y], 1)
        return y

    return StagePlan([("down path", down), ("up path", up)], scopes=scopes)
