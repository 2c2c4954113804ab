"""SPADE generator (Park et al., CVPR 2019), ``use_vae`` off.

Written from the official forward specification (docs/generators.md, "SPADE").
State-dict keys and shapes equal NVlabs/SPADE (``fc``, ``head_0``, ``G_middle_0/1``, ``up_0..3`` (``up_4``
for "most"), ``conv_img``), so official checkpoints load by name. Details that decide bit-exactness:

- the residual-block convs use ``torch.nn.utils.spectral_norm`` (keys ``weight_orig``, ``weight_u``,
  ``weight_v``); in eval mode σ = u · (W v) from the **stored** u and v, no power iteration;
  ``fc`` and ``conv_img`` have no spectral norm and ``conv_s`` has no bias;
- SPADE normalises with a parameter-free BatchNorm2d (running statistics in eval mode) and modulates
  with a 3x3 conv MLP (hidden width 128) on the label map, which is resized with PyTorch's legacy
  ``'nearest'`` (the top-left pixel of each block, never ``'nearest-exact'``);
- every x2 upsampling is nearest (pixel duplication).

**Latent size.** The official generator derives the latent size from its training crop; here it is
computed from the input: (H / 2**n, W / 2**n) with n = 5 / 6 / 7 for normal / more / most. At a
preset's resolution the two agree; other resolutions must be multiples of 2**n.

**Folding.** :meth:`SPADEGenerator.prepare_for_inference` switches to eval mode and replaces every
spectral-norm conv by a plain conv whose weight is ``weight_orig / σ`` (the eval-mode weight). The
state dict then has ``<conv>.weight`` instead of ``weight_orig``/``weight_u``/``weight_v``: load
checkpoints before folding, and save unfolded models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import remove_spectral_norm, spectral_norm

from asapbench.errors import UserError
from asapbench.models.base import Generator
from asapbench.modelspec import ModelSpec, Preset, register_model
from asapbench.stages import StagePlan, with_label_encoding

#: num_upsampling_layers -> n, the number of x2 upsamplings from the latent to the output
UPSAMPLING = {"normal": 5, "more": 6, "most": 7}


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``BN(x) * (1 + γ(seg)) + β(seg)``.

    BN is parameter-free (``param_free_norm``: running statistics only); γ and β come from a 3x3 conv
    MLP ``mlp_shared`` (label_nc -> hidden, ReLU) followed by ``mlp_gamma`` / ``mlp_beta`` (hidden -> C)
    on the label map resized to x's size with legacy nearest.
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel, padding=pad)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")  # legacy nearest: top-left pixel
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """``shortcut(x) + conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x))))))`` with fmid = min(fin, fout).

    The shortcut is x when fin == fout, otherwise ``conv_s(SPADE_s(x))`` (1x1, no bias, no activation).
    """

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128, use_spectral_norm: bool = True):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        self.conv_0 = sn(nn.Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = sn(nn.Conv2d(fmid, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = sn(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmid, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SPADEGenerator(Generator):
    """SPADE generator: the label map, resized to the latent size, goes through ``fc`` (3x3 conv to
    16 ngf channels), then SPADE residual blocks with x2 nearest upsamplings, then
    ``tanh(conv_img(lrelu(x, 0.2)))``.

    Args:
        label_nc: semantic classes one-hot encoded in the input (Cityscapes: 35).
        instance_edge: the input's last channel is the instance-edge map (it is part of the
            segmentation fed to every SPADE).
        ngf: base width (official 64): blocks run at 16/16/16/8/4/2/1 (/0.5) x ngf channels.
        num_upsampling_layers: "normal" (5 upsamplings), "more" (6; the official Cityscapes setting)
            or "most" (7). H and W must be multiples of 2**n.
        spade_hidden: hidden width of the SPADE label MLP (official 128, hard-coded there).
        use_spectral_norm: spectral norm on the residual-block convs (official: on).
        output_nc: output channels.
        contain_dontcare: one extra one-hot channel for a don't-care label.
    """

    def __init__(
        self,
        label_nc: int = 35,
        instance_edge: bool = True,
        ngf: int = 64,
        num_upsampling_layers: str = "more",
        spade_hidden: int = 128,
        use_spectral_norm: bool = True,
        output_nc: int = 3,
        contain_dontcare: bool = False,
    ):
        super().__init__()
        if num_upsampling_layers not in UPSAMPLING:
            raise ValueError(f"num_upsampling_layers must be one of {', '.join(UPSAMPLING)}, got {num_upsampling_layers!r}")
        if num_upsampling_layers == "most" and ngf < 2:
            raise ValueError("num_upsampling_layers 'most' needs ngf >= 2 (its last block has ngf/2 channels)")
        self.label_nc = label_nc
        self.instance_edge = instance_edge
        self.contain_dontcare = contain_dontcare
        self.input_nc = label_nc + int(contain_dontcare) + int(instance_edge)
        self.num_upsampling_layers = num_upsampling_layers
        self.n_up = UPSAMPLING[num_upsampling_layers]
        nf, sem = ngf, self.input_nc

        def block(fin: int, fout: int) -> SPADEResnetBlock:
            return SPADEResnetBlock(fin, fout, sem, spade_hidden, use_spectral_norm)

        self.fc = nn.Conv2d(sem, 16 * nf, 3, padding=1)
        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, 1 * nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, output_nc, 3, padding=1)
        self._init_weights()

    def _init_weights(self, gain: float = 0.02) -> None:
        """The official ``init_type xavier``, ``init_variance 0.02``: xavier-normal conv weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
                nn.init.xavier_normal_(w, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def size_multiple(self) -> tuple[int, int]:
        m = 2**self.n_up
        return m, m

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(sh, sw): the size ``fc`` runs at for an H x W input."""
        self.check_input_size(height, width)
        return height >> self.n_up, width >> self.n_up

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def stage_plan(self) -> StagePlan:
        """The stages ``asapbench profile`` times (:class:`asapbench.stages.StagePlan`)."""
        return with_label_encoding(self, _spade_plan(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, input_nc, H, W) -> (N, 3, H, W)
        x = self.model_input(x)  # label-map input: encoded here (--input labels)
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise UserError(
                f"SPADE expects an input [N, {self.input_nc}, H, W] (one-hot of {self.label_nc} labels"
                f"{' + dontcare' if self.contain_dontcare else ''}{' + instance edge' if self.instance_edge else ''}), "
                f"got {list(x.shape)}; build it with asapbench.inputs.encode_labels"
            )
        seg = x
        sh, sw = self.latent_size(int(x.shape[2]), int(x.shape[3]))
        h = self.fc(F.interpolate(seg, size=(sh, sw), mode="nearest"))  # (N, 16 ngf, H/2^n, W/2^n)
        h = self.head_0(h, seg)
        h = self.G_middle_0(self._up(h), seg)
        if self.num_upsampling_layers in ("more", "most"):
            h = self._up(h)
        h = self.G_middle_1(h, seg)
        h = self.up_0(self._up(h), seg)
        h = self.up_1(self._up(h), seg)
        h = self.up_2(self._up(h), seg)
        h = self.up_3(self._up(h), seg)
        if self.num_upsampling_layers == "most":
            h = self.up_4(self._up(h), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(h, 0.2)))

    # deployment -----------------------------------------------------------------------------
    def spectral_norm_folded(self) -> bool:
        """True once :meth:`prepare_for_inference` has replaced the spectral-norm reparametrisation."""
        return not any(hasattr(m, "weight_orig") for m in self.modules())

    def prepare_for_inference(self) -> SPADEGenerator:
        """Eval mode, and fold spectral norm into plain conv weights (idempotent; returns self).

        Each ``<conv>.weight_orig``/``weight_u``/``weight_v`` becomes ``<conv>.weight = weight_orig / σ``
        with σ = u · (W v) from the stored vectors (``torch.nn.utils.remove_spectral_norm``, which does
        no power iteration). The output is unchanged; the state dict no longer has the official keys.
        """
        self.eval()
        for m in self.modules():
            if hasattr(m, "weight_orig"):
                remove_spectral_norm(m)
        return self


# --------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------
_CITY = dict(label_nc=35, instance_edge=True, ngf=64)

SPADE_PRESETS = {
    "cityscapes": Preset("cityscapes", dict(_CITY, num_upsampling_layers="more"), (256, 512),
                         "spade_cityscapes_more_256x512.json",
                         "Cityscapes 256x512 (crop 512, the official setting): num_upsampling_layers more, latent 4x8"),
    "cityscapes-1024": Preset("cityscapes-1024", dict(_CITY, num_upsampling_layers="more"), (512, 1024),
                              "spade_cityscapes_more_512x1024.json",
                              "Cityscapes 512x1024 (crop 1024): num_upsampling_layers more, latent 8x16"),
    "cityscapes-normal": Preset("cityscapes-normal", dict(_CITY, num_upsampling_layers="normal"), (256, 512),
                                "spade_cityscapes_normal_256x512.json",
                                "Cityscapes 256x512 with num_upsampling_layers normal (the repo default), latent 8x16"),
    "square512": Preset("square512", dict(_CITY, num_upsampling_layers="normal"), (512, 512),
                        "spade_cityscapes_normal_1024x1024.json",
                        "square 512x512 (aspect 1): num_upsampling_layers normal, latent 16x16"),
    "square1024": Preset("square1024", dict(_CITY, num_upsampling_layers="normal"), (1024, 1024),
                         "spade_cityscapes_normal_1024x1024.json",
                         "square 1024x1024 (aspect 1): num_upsampling_layers normal, latent 32x32"),
    "square2048": Preset("square2048", dict(_CITY, num_upsampling_layers="normal"), (2048, 2048),
                         "spade_cityscapes_normal_2048x2048.json",
                         "square 2048x2048 (aspect 1): num_upsampling_layers normal, latent 64x64"),
}


def _spade_configure(height: int, width: int):
    """For sizes no preset was trained at (the registry tries those first): 2:1 -> cityscapes ("more"),
    square -> the nearest square preset ("normal"), anything else -> cityscapes-normal. Sizes come from the input."""
    if width == 2 * height:
        return "cityscapes", {}
    if width == height:
        squares = [p for p in SPADE_PRESETS.values() if p.name.startswith("square")]
        best = min(squares, key=lambda p: abs(p.resolution[0] - height))
        return best.name, {}
    return "cityscapes-normal", {}


register_model(ModelSpec(
    name="spade",
    builder=SPADEGenerator,
    presets=SPADE_PRESETS,
    default_preset="cityscapes",
    description="SPADE generator (Park et al. 2019)",
    configure=_spade_configure,
))

register_model(ModelSpec(
    name="spade-tiny",
    builder=SPADEGenerator,
    presets={
        "tiny": Preset("tiny", dict(label_nc=6, instance_edge=True, ngf=4, num_upsampling_layers="normal", spade_hidden=8),
                       (64, 128), None, "test variant: 6 labels + edge, ngf 4, normal (latent 2x4), SPADE MLP width 8"),
    },
    default_preset="tiny",
    description="tiny SPADE generator for tests (same code path, small widths)",
    tiny=True,
    family="spade",
))


def _spade_plan(m) -> StagePlan:
    names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
    if m.num_upsampling_layers == "most":
        names.append("up_4")

    def head(x):
        sh, sw = m.latent_size(int(x.shape[2]), int(x.shape[3]))
        return x, m.fc(F.interpolate(x, size=(sh, sw), mode="nearest"))

    def blocks(state):  # the same sequence as SPADEGenerator.forward
        seg, h = state
        h = m.head_0(h, seg)
        h = m.G_middle_0(m._up(h), seg)
        if m.num_upsampling_layers in ("more", "most"):
            h = m._up(h)
        h = m.G_middle_1(h, seg)
        for name in names[3:]:
            h = getattr(m, name)(m._up(h), seg)
        return h

    def out(h):
        return torch.tanh(m.conv_img(F.leaky_relu(h, 0.2)))

    scopes = {"fc": "head", "conv_img": "out", **{n: "SPADE blocks" for n in names}}
    return StagePlan(
        [("head", head), ("SPADE blocks", blocks), ("out", out)],
        scopes=scopes,
        calls=[("self.fc(", "head"), ("self.latent_size(", "head"), ("self._up(", "SPADE blocks"),
               ("self.G_middle_", "SPADE blocks"), ("self.up_", "SPADE blocks"), ("self.conv_img(", "out")],
    )
