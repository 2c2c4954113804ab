"""Multi-scale PatchGAN discriminator."""

from __future__ import annotations

import torch
from torch import nn

from asapbench.models.discriminators import MultiscaleDiscriminator, NLayerDiscriminator, default_num_d


def test_patchgan_layers_and_shapes():
    d = NLayerDiscriminator(7, ndf=64, n_layers=4)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (7, 64, (4, 4), (2, 2), (2, 2)), (64, 128, (4, 4), (2, 2), (2, 2)), (128, 256, (4, 4), (2, 2), (2, 2)),
        (256, 512, (4, 4), (1, 1), (2, 2)), (512, 1, (4, 4), (1, 1), (2, 2))]
    # no norm after the first conv; InstanceNorm (no affine) + LeakyReLU(0.2) after the middle ones; bias only where no norm follows
    assert [type(m).__name__ for m in d.model0] == ["Conv2d", "LeakyReLU"]
    for i in (1, 2, 3):
        stage = getattr(d, f"model{i}")
        assert [type(m).__name__ for m in stage] == ["Conv2d", "InstanceNorm2d", "LeakyReLU"]
        assert stage[0].bias is None and not stage[1].affine and stage[2].negative_slope == 0.2
    assert d.model0[0].bias is not None and d.model4[0].bias is not None and len(d.model4) == 1
    feats = d(torch.randn(2, 7, 64, 64))
    # 4x4 conv with padding 2: stride 2 -> floor(H/2) + 1, stride 1 -> H + 1
    assert [tuple(f.shape) for f in feats] == [(2, 64, 33, 33), (2, 128, 17, 17), (2, 256, 9, 9), (2, 512, 10, 10),
                                               (2, 1, 11, 11)]


def test_multiscale_downsampling_and_gradients():
    d = MultiscaleDiscriminator(5, num_d=3, ndf=8)
    x = torch.randn(1, 5, 64, 96, requires_grad=True)
    out = d(x)
    assert len(out) == 3 and all(len(s) == 5 for s in out)
    assert [tuple(s[0].shape[2:]) for s in out] == [(33, 49), (17, 25), (9, 13)]
    sum(s[-1].mean() for s in out).backward()
    assert x.grad is not None and all(p.grad is not None for p in d.parameters())
    # count_include_pad=False: a constant image stays constant at the borders
    c = MultiscaleDiscriminator.downsample(torch.full((1, 1, 8, 8), 3.0))
    assert c.shape == (1, 1, 4, 4) and torch.allclose(c, torch.full_like(c, 3.0))
    # scale 1 sees exactly the pooled input
    ref = d.discriminator_1(MultiscaleDiscriminator.downsample(x))[-1]
    assert torch.allclose(ref, out[1][-1])


def test_spectral_option_and_defaults():
    d = MultiscaleDiscriminator(4, num_d=2, ndf=8, spectral=True)
    keys = d.state_dict().keys()
    assert "discriminator_0.model0.0.weight_orig" in keys and "discriminator_1.model4.0.weight_u" in keys
    assert "discriminator_0.model0.0.weight_orig" not in MultiscaleDiscriminator(4, 2, ndf=8).state_dict()
    assert default_num_d(256, 512) == 2 and default_num_d(512, 512) == 2 and default_num_d(512, 1024) == 3
    assert default_num_d(1024, 1024) == 3
