"""GAN losses: hinge, feature matching, VGG19 perceptual loss with torchvision-format weights."""

from __future__ import annotations

import pytest
import torch

from asapbench.errors import UserError
from asapbench.losses import VGG19Features, VGGLoss, feature_matching_loss, hinge_d_loss, hinge_g_loss, load_vgg19

# torchvision vgg19().features: conv layers at these indices (ReLU after each, max pools at 4, 9, 18, 27, 36)
TV_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
            16: (256, 256), 19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512), 28: (512, 512),
            30: (512, 512), 32: (512, 512), 34: (512, 512)}


def test_hinge_losses_by_hand():
    real = [[torch.zeros(1), torch.tensor([0.5, 2.0])], [torch.zeros(1), torch.tensor([-1.0])]]
    fake = [[torch.zeros(1), torch.tensor([-2.0, 0.0])], [torch.zeros(1), torch.tensor([3.0])]]
    lr, lf = hinge_d_loss(real, fake)
    # scale 0: mean(relu(1-0.5), relu(1-2)) = 0.25; scale 1: relu(1+1) = 2 -> (0.25 + 2) / 2
    assert lr.item() == pytest.approx((0.25 + 2.0) / 2)
    # scale 0: mean(relu(1-2), relu(1+0)) = 0.5; scale 1: relu(1+3) = 4 -> (0.5 + 4) / 2
    assert lf.item() == pytest.approx((0.5 + 4.0) / 2)
    assert hinge_g_loss(fake).item() == pytest.approx((1.0 + -3.0) / 2)


def test_feature_matching_by_hand():
    ff = [[torch.ones(2, 3), torch.zeros(2, 1), torch.full((1,), 9.0)],
          [torch.full((4,), 2.0), torch.full((1,), 7.0)]]
    fr = [[torch.zeros(2, 3), torch.full((2, 1), 3.0), torch.zeros(1)],
          [torch.zeros(4), torch.zeros(1)]]
    ff[0][0].requires_grad_(True)
    fr[0][0].requires_grad_(True)
    loss = feature_matching_loss(ff, fr, lambda_feat=10.0)
    # last stage (prediction) excluded; each L1 scaled by 10 / num_D = 5: (1 + 3) * 5 + 2 * 5
    assert loss.item() == pytest.approx(30.0)
    loss.backward()
    assert ff[0][0].grad is not None and fr[0][0].grad is None  # real features are detached


def _tv_state_dict(seed=0, classifier=True, convs=TV_CONVS):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (co, ci) in convs.items():
        sd[f"features.{i}.weight"] = torch.randn(co, ci, 3, 3, generator=g) * (2 / (ci * 9)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(co, generator=g) * 0.01
    if classifier:
        sd["classifier.0.weight"] = torch.zeros(8, 4)
        sd["classifier.0.bias"] = torch.zeros(8)
    return sd


def test_vgg19_layout_matches_torchvision_keys():
    names = {k: tuple(v.shape) for k, v in VGG19Features().state_dict().items()}
    expect = {}
    for i, (co, ci) in TV_CONVS.items():
        expect[f"features.{i}.weight"] = (co, ci, 3, 3)
        expect[f"features.{i}.bias"] = (co,)
    assert names == expect
    feats = VGG19Features()(torch.zeros(1, 3, 32, 48))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 48), (128, 16, 24), (256, 8, 12), (512, 4, 6), (512, 2, 3)]


def test_load_vgg19_file_and_loss(tmp_path):
    sd = _tv_state_dict()
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    vgg = load_vgg19(path)
    assert torch.equal(vgg.features[34].weight, sd["features.34.weight"])
    assert not any(p.requires_grad for p in vgg.parameters())
    # a features-only state dict (keys "<i>.weight") loads as well
    torch.save({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}, tmp_path / "f.pth")
    assert torch.equal(load_vgg19(tmp_path / "f.pth").features[0].weight, sd["features.0.weight"])
    loss = VGGLoss(vgg)
    g = torch.Generator().manual_seed(1)
    real = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    fake = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
    assert loss(real, real).item() == 0.0
    val = loss(fake, real)
    assert val.item() > 0
    val.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_load_vgg19_rejects_wrong_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_vgg19(tmp_path / "missing.pth")
    vgg16 = {k: v for k, v in _tv_state_dict().items() if k not in ("features.34.weight", "features.34.bias")}
    torch.save(vgg16, tmp_path / "vgg16.pth")
    with pytest.raises(UserError, match="missing"):
        load_vgg19(tmp_path / "vgg16.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_vgg19(tmp_path / "junk.pth")
