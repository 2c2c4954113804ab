"""pix2pixHD generators (Wang et al., CVPR 2018): ``GlobalGenerator`` and ``LocalEnhancer``.

Written from the official forward specification (docs/generators.md, "pix2pixHD").
State-dict keys and shapes equal NVIDIA/pix2pixHD (``model.<i>``, ``model1_1.<i>``, ``model1_2.<i>``),
so official checkpoints load by name. Details that decide bit-exactness:

- InstanceNorm2d without affine parameters and without running statistics (no state-dict keys),
  and every conv keeps its bias;
- 7x7 convs and the residual blocks use reflection padding, the stride-2 convs zero padding 1;
- upsampling is ConvTranspose2d(k3, s2, pad 1, output_padding 1), weight layout [C_in, C_out, k, k];
- the LocalEnhancer's global trunk sees the input average-pooled with ``count_include_pad=False``.

Registered as ``pix2pixhd`` (global, 512x1024 as ``test_512p.sh``), ``pix2pixhd-local``
(1 local enhancer, ngf 32, 1024x2048 as ``test_1024p.sh``) and tiny test variants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asapbench.errors import UserError
from asapbench.models.base import Generator
from asapbench.modelspec import ModelSpec, Preset, register_model
from asapbench.stages import StagePlan, seq_range, with_label_encoding


def _norm(channels: int) -> nn.Module:
    """pix2pixHD's ``norm='instance'``: InstanceNorm2d(affine=False), no running statistics."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + [reflect-pad 1, conv3x3, IN, ReLU, reflect-pad 1, conv3x3, IN](x)``; no activation after the sum.

    Keys: ``conv_block.1.weight/bias`` and ``conv_block.5.weight/bias``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=True),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=True),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _global_layers(in_nc: int, out_nc: int, ngf: int, n_downsampling: int, n_blocks: int, head: bool) -> list[nn.Module]:
    """Module list of a GlobalGenerator: ``model.0 ...``; ``head=False`` drops the last pad/conv/tanh."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7, padding=0), _norm(ngf), nn.ReLU(True)]
    for i in range(n_downsampling):  # each: ceil(n/2)
        c = ngf * 2**i
        layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
    width = ngf * 2**n_downsampling
    layers += [ResnetBlock(width) for _ in range(n_blocks)]
    for i in range(n_downsampling):  # each: x2 exactly
        c = ngf * 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
            _norm(c // 2),
            nn.ReLU(True),
        ]
    if head:
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7, padding=0), nn.Tanh()]
    return layers


def _init_weights(module: nn.Module) -> None:
    """pix2pixHD's ``weights_init``: conv (and conv-transpose) weights ~ N(0, 0.02); biases keep torch's default."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)


def _check_labels_input(gen: Generator, x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[1] != gen.input_nc:
        raise UserError(
            f"{what} expects an input [N, {gen.input_nc}, H, W] (one-hot of {gen.label_nc} labels"
            f"{' + dontcare' if gen.contain_dontcare else ''}{' + instance edge' if gen.instance_edge else ''}), "
            f"got {list(x.shape)}; build it with asapbench.inputs.encode_labels"
        )
    gen.check_input_size(int(x.shape[2]), int(x.shape[3]))


class Pix2PixHDGlobal(Generator):
    """pix2pixHD ``GlobalGenerator``: 7x7 conv, ``n_downsampling`` stride-2 convs, ``n_blocks`` residual
    blocks, as many transposed convs, 7x7 conv, tanh.

    Args:
        label_nc: semantic classes one-hot encoded in the input (Cityscapes: 35).
        instance_edge: the input's last channel is the instance-edge map.
        ngf: width of the first conv (official 64); width doubles at each downsampling.
        n_downsampling: stride-2 convs (official 4): H and W must be multiples of 2**n_downsampling
            and at least 2**(n_downsampling + 1) (the bottleneck's reflection padding needs 2 pixels).
        n_blocks: residual blocks at the bottleneck (official 9).
        output_nc: output channels.
        contain_dontcare: one extra one-hot channel for a don't-care label.
    """

    def __init__(
        self,
        label_nc: int = 35,
        instance_edge: bool = True,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
        output_nc: int = 3,
        contain_dontcare: bool = False,
    ):
        super().__init__()
        if n_downsampling < 0 or n_blocks < 0 or ngf < 1:
            raise ValueError(f"need ngf >= 1, n_downsampling >= 0, n_blocks >= 0; got {ngf}, {n_downsampling}, {n_blocks}")
        self.label_nc = label_nc
        self.instance_edge = instance_edge
        self.contain_dontcare = contain_dontcare
        self.input_nc = label_nc + int(contain_dontcare) + int(instance_edge)
        self.n_downsampling = n_downsampling
        self.model = nn.Sequential(*_global_layers(self.input_nc, output_nc, ngf, n_downsampling, n_blocks, head=True))
        _init_weights(self)

    def size_multiple(self) -> tuple[int, int]:
        m = 2**self.n_downsampling
        return m, m

    def min_size(self) -> tuple[int, int]:
        # the residual blocks reflect-pad by 1, which needs at least 2 pixels at the bottleneck
        m = max(4, 2 ** (self.n_downsampling + 1))
        return m, m

    def stage_plan(self) -> StagePlan:
        """The stages ``asapbench profile`` times (:class:`asapbench.stages.StagePlan`)."""
        return with_label_encoding(self, _pix2pixhd_global_plan(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, input_nc, H, W) -> (N, 3, H, W)
        x = self.model_input(x)  # label-map input: encoded here (--input labels)
        _check_labels_input(self, x, "pix2pixHD (global)")
        return self.model(x)


class Pix2PixHDLocal(Generator):
    """pix2pixHD ``LocalEnhancer``: a global trunk (GlobalGenerator of width ``ngf * 2**n_local_enhancers``
    without its output layers) on the average-pooled input, plus local enhancers at the finer scales.

    Forward with one enhancer: ``y = model1_2(model1_1(x) + model(avgpool(x)))``, where avgpool is
    AvgPool2d(3, stride 2, padding 1, count_include_pad=False).

    Args:
        label_nc, instance_edge, contain_dontcare, output_nc: as :class:`Pix2PixHDGlobal`.
        ngf: width of the finest enhancer (official 32; the trunk then has width 64).
        n_downsample_global, n_blocks_global: the trunk's downsamplings (4) and residual blocks (9).
        n_local_enhancers: enhancers (official 1); H and W must be multiples of
            2**(n_downsample_global + n_local_enhancers), and twice that at least.
        n_blocks_local: residual blocks in each enhancer (official 3).
    """

    def __init__(
        self,
        label_nc: int = 35,
        instance_edge: bool = True,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        output_nc: int = 3,
        contain_dontcare: bool = False,
    ):
        super().__init__()
        if n_local_enhancers < 1:
            raise ValueError(f"n_local_enhancers must be >= 1 (use pix2pixhd for the global generator), got {n_local_enhancers}")
        self.label_nc = label_nc
        self.instance_edge = instance_edge
        self.contain_dontcare = contain_dontcare
        self.input_nc = label_nc + int(contain_dontcare) + int(instance_edge)
        self.n_downsample_global = n_downsample_global
        self.n_local_enhancers = n_local_enhancers
        ngf_global = ngf * 2**n_local_enhancers
        self.model = nn.Sequential(
            *_global_layers(self.input_nc, output_nc, ngf_global, n_downsample_global, n_blocks_global, head=False)
        )
        for n in range(1, n_local_enhancers + 1):
            w = ngf * 2 ** (n_local_enhancers - n)
            down: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(self.input_nc, w, 7, padding=0)]
            down += [_norm(w), nn.ReLU(True), nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), _norm(2 * w), nn.ReLU(True)]
            up: list[nn.Module] = [ResnetBlock(2 * w) for _ in range(n_blocks_local)]
            up += [nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1), _norm(w), nn.ReLU(True)]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        _init_weights(self)

    def size_multiple(self) -> tuple[int, int]:
        m = 2 ** (self.n_downsample_global + self.n_local_enhancers)
        return m, m

    def min_size(self) -> tuple[int, int]:
        # the trunk's residual blocks reflect-pad by 1: at least 2 pixels at its bottleneck
        m = max(8, 2 ** (self.n_downsample_global + self.n_local_enhancers + 1))
        return m, m

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        """The input pyramid step: 3x3 average, stride 2, zero pad 1 not counted in the mean."""
        return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)

    def stage_plan(self) -> StagePlan:
        """The stages ``asapbench profile`` times (:class:`asapbench.stages.StagePlan`)."""
        return with_label_encoding(self, _pix2pixhd_local_plan(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, input_nc, H, W) -> (N, 3, H, W)
        x = self.model_input(x)  # label-map input: encoded here (--input labels)
        _check_labels_input(self, x, "pix2pixHD (local)")
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        y = self.model(pyramid[-1])  # (N, 2 ngf_local_1, H / 2**n_local, ...)
        for n in range(1, self.n_local_enhancers + 1):
            xi = pyramid[self.n_local_enhancers - n]
            y = getattr(self, f"model{n}_2")(getattr(self, f"model{n}_1")(xi) + y)
        return y


# --------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------
_CITY = dict(label_nc=35, instance_edge=True)

register_model(ModelSpec(
    name="pix2pixhd",
    builder=Pix2PixHDGlobal,
    presets={
        "cityscapes": Preset(
            "cityscapes", dict(_CITY, ngf=64, n_downsampling=4, n_blocks=9), (512, 1024), "pix2pixhd_global.json",
            "Cityscapes 512x1024 (test_512p.sh): global generator, ngf 64, 4 downsamplings, 9 blocks, 35 labels + edge",
        ),
    },
    default_preset="cityscapes",
    description="pix2pixHD global generator (Wang et al. 2018)",
))

register_model(ModelSpec(
    name="pix2pixhd-local",
    builder=Pix2PixHDLocal,
    presets={
        "cityscapes": Preset(
            "cityscapes",
            dict(_CITY, ngf=32, n_downsample_global=4, n_blocks_global=9, n_local_enhancers=1, n_blocks_local=3),
            (1024, 2048), "pix2pixhd_local.json",
            "Cityscapes 1024x2048 (test_1024p.sh): global trunk ngf 64 + 1 local enhancer ngf 32, 3 local blocks",
        ),
    },
    default_preset="cityscapes",
    description="pix2pixHD global + 1 local enhancer (official 1024p model)",
))

register_model(ModelSpec(
    name="pix2pixhd-tiny",
    builder=Pix2PixHDGlobal,
    presets={
        "tiny": Preset("tiny", dict(label_nc=6, instance_edge=True, ngf=4, n_downsampling=2, n_blocks=2), (32, 64), None,
                       "test variant: 6 labels + edge, ngf 4, 2 downsamplings, 2 blocks"),
    },
    default_preset="tiny",
    description="tiny pix2pixHD global generator for tests (same code path, small widths)",
    tiny=True,
    family="pix2pixhd",
))

register_model(ModelSpec(
    name="pix2pixhd-local-tiny",
    builder=Pix2PixHDLocal,
    presets={
        "tiny": Preset(
            "tiny",
            dict(label_nc=6, instance_edge=True, ngf=4, n_downsample_global=2, n_blocks_global=1,
                 n_local_enhancers=1, n_blocks_local=1),
            (32, 64), None, "test variant: 6 labels + edge, trunk ngf 8 (2 downsamplings, 1 block), enhancer ngf 4",
        ),
    },
    default_preset="tiny",
    description="tiny pix2pixHD local enhancer for tests (same code path, small widths)",
    tiny=True,
    family="pix2pixhd-local",
))


def _global_split(seq: nn.Sequential) -> tuple[int, int]:
    idx = [i for i, layer in enumerate(seq) if isinstance(layer, ResnetBlock)]
    return (idx[0], idx[-1] + 1) if idx else (len(seq), len(seq))


def _pix2pixhd_global_plan(m) -> StagePlan:
    i0, i1 = _global_split(m.model)
    scopes = {f"model.{i}": ("front" if i < i0 else "residual blocks" if i < i1 else "back") for i in range(len(m.model))}
    return StagePlan(
        [("front", seq_range(m.model, 0, i0)), ("residual blocks", seq_range(m.model, i0, i1)),
         ("back", seq_range(m.model, i1, len(m.model)))],
        scopes=scopes,
    )


def _pix2pixhd_local_plan(m) -> StagePlan:
    i0, i1 = _global_split(m.model)
    n_loc = m.n_local_enhancers

    def pyramid(x):
        pyr = [x]
        for _ in range(n_loc):
            pyr.append(m.downsample(pyr[-1]))
        return pyr, pyr[-1]

    def seg(lo, hi):
        f = seq_range(m.model, lo, hi)
        return lambda state: (state[0], f(state[1]))

    def local(state):
        pyr, y = state
        for n in range(1, n_loc + 1):
            y = getattr(m, f"model{n}_2")(getattr(m, f"model{n}_1")(pyr[n_loc - n]) + y)
        return y

    scopes = {f"model.{i}": ("front" if i < i0 else "residual blocks" if i < i1 else "back") for i in range(len(m.model))}
    for n in range(1, n_loc + 1):
        scopes[f"model{n}_1"] = scopes[f"model{n}_2"] = "local enhancer"
    return StagePlan(
        [("input pyramid", pyramid), ("front", seg(0, i0)), ("residual blocks", seg(i0, i1)),
         ("back", seg(i1, len(m.model))), ("local enhancer", local)],
        scopes=scopes,
        calls=[("self.downsample(", "input pyramid"), ('f"model{n}_2"', "local enhancer")],
    )
