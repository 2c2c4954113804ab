"""Multi-scale PatchGAN discriminator (pix2pixHD / SPADE / ASAP-Net training recipe).

Each scale is a 70x70 PatchGAN on ``concat(generator input, image)``: 4x4 convolutions, padding 2,
C64 (stride 2, no norm) - C128 (s2) - C256 (s2) - C512 (s1) - C1 (s1), InstanceNorm (no affine) and
LeakyReLU(0.2) after every conv but the first (no norm) and the last (no norm, no activation).
Convolutions followed by a norm have no bias. Scale ``i + 1`` sees the input average-pooled with
kernel 3, stride 2, padding 1 (``count_include_pad=False``). The official ASAP-Net/SPADE default
(``norm_D = spectralinstance``) also wraps every conv in spectral norm: ``spectral=True``.

``forward`` returns, per scale, the list of every layer's output; the last entry of each list is
the patch prediction, the others are the features for the feature-matching loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NLayerDiscriminator(nn.Module):
    """One PatchGAN scale; ``forward`` returns the outputs of its ``n_layers + 1`` stages."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4, spectral: bool = False, max_nf: int = 512):
        super().__init__()
        kw, pad = 4, int(math.ceil((4 - 1) / 2))  # 4x4 kernels, padding 2

        def conv(cin, cout, stride, bias):
            c = nn.Conv2d(cin, cout, kw, stride=stride, padding=pad, bias=bias)
            return nn.utils.spectral_norm(c) if spectral else c

        stages = [[conv(input_nc, ndf, 2, True), nn.LeakyReLU(0.2)]]
        nf = ndf
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, max_nf)
            stride = 1 if n == n_layers - 1 else 2
            stages.append([conv(prev, nf, stride, False), nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)])
        stages.append([conv(nf, 1, 1, True)])
        self.n_stages = len(stages)
        for i, layers in enumerate(stages):
            self.add_module(f"model{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(self.n_stages):
            x = getattr(self, f"model{i}")(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs on successively average-pooled inputs (2 scales at 512, 3 at 1024 in the paper).

    Args:
        input_nc: channels of ``concat(generator input, image)``.
        num_d: number of scales.
        ndf, n_layers: width of the first conv and number of strided/normed stages per scale.
        spectral: spectral norm on every conv (official ``spectralinstance``).
    """

    def __init__(self, input_nc: int, num_d: int = 2, ndf: int = 64, n_layers: int = 4, spectral: bool = False):
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.num_d = num_d
        for i in range(num_d):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(input_nc, ndf, n_layers, spectral))

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        """Average pool 3x3, stride 2, padding 1, padded pixels not counted."""
        return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:  # (N, C, H, W) -> per scale, per stage
        out = []
        for i in range(self.num_d):
            out.append(getattr(self, f"discriminator_{i}")(x))
            if i != self.num_d - 1:
                x = self.downsample(x)
        return out


def default_num_d(height: int, width: int) -> int:
    """The paper's number of scales: 3 from 1024 pixels on the long side, else 2."""
    return 3 if max(height, width) >= 1024 else 2
