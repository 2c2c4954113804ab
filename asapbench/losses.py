"""GAN training losses of the ASAP-Net / SPADE / pix2pixHD recipe.

- Hinge adversarial loss (SPADE ``gan_mode=hinge``): D minimises mean(relu(1 - D(real))) +
  mean(relu(1 + D(fake))); G minimises -mean(D(fake)). Multi-scale predictions are averaged over scales.
- Discriminator feature matching (pix2pixHD): lambda_feat / num_D * sum over scales and intermediate
  stages of L1(D_k(fake), D_k(real).detach()), lambda_feat = 10.
- VGG19 perceptual loss (pix2pixHD / SPADE): sum over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of
  w_i * L1(phi_i(fake), phi_i(real).detach()) with w = 1/32, 1/16, 1/8, 1/4, 1, lambda_vgg = 10.
  As in the official code the images are fed in [-1, 1] without ImageNet normalisation.

VGG19 is written here in plain torch with torchvision's layer indices, so ``features.<i>.weight``
keys of torchvision's ``vgg19`` state-dict file load directly (:func:`load_vgg19`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asapbench.errors import UserError

# torchvision's vgg19 configuration "E": channel counts, "M" = 2x2 max pool
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# features[0:2] -> relu1_1, [2:7] -> relu2_1, [7:12] -> relu3_1, [12:21] -> relu4_1, [21:30] -> relu5_1
VGG_SLICES = [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]
VGG_WEIGHTS = [1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0]


def _flat(preds) -> list[torch.Tensor]:
    """The final prediction of each scale (``[[feat, ..., pred], ...]`` or a single tensor)."""
    if isinstance(preds, torch.Tensor):
        return [preds]
    return [p[-1] if isinstance(p, (list, tuple)) else p for p in preds]


def hinge_d_loss(pred_real, pred_fake) -> tuple[torch.Tensor, torch.Tensor]:
    """(D loss on real, D loss on fake), each averaged over scales."""
    real = _flat(pred_real)
    fake = _flat(pred_fake)
    loss_real = sum(F.relu(1.0 - p.float()).mean() for p in real) / len(real)
    loss_fake = sum(F.relu(1.0 + p.float()).mean() for p in fake) / len(fake)
    return loss_real, loss_fake


def hinge_g_loss(pred_fake) -> torch.Tensor:
    """Generator hinge loss -mean(D(fake)), averaged over scales."""
    fake = _flat(pred_fake)
    return sum(-p.float().mean() for p in fake) / len(fake)


def feature_matching_loss(feats_fake, feats_real, lambda_feat: float = 10.0) -> torch.Tensor:
    """lambda_feat / num_D * sum_k sum_{stages but last} L1(fake_k, real_k.detach())."""
    num_d = len(feats_fake)
    loss = feats_fake[0][0].new_zeros((), dtype=torch.float32)
    for ff, fr in zip(feats_fake, feats_real):
        for a, b in zip(ff[:-1], fr[:-1]):
            loss = loss + F.l1_loss(a.float(), b.detach().float()) * (lambda_feat / num_d)
    return loss


class VGG19Features(nn.Module):
    """VGG19 convolutional trunk with torchvision's ``features.<i>`` layout (no classifier)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of ``x [N, 3, H, W]``."""
        out = []
        for a, b in VGG_SLICES:
            for i in range(a, b):
                x = self.features[i](x)
            out.append(x)
        return out


def load_vgg19(path: str | os.PathLike) -> VGG19Features:
    """VGG19 features loaded from torchvision's vgg19 state-dict file (``features.<i>.weight`` keys).

    A state dict of the features alone (``<i>.weight``) is accepted too; the classifier is ignored.
    Returns the frozen module in eval mode.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"VGG19 weights file {str(p)!r} not found; pass torchvision's vgg19 state dict "
                        "(e.g. vgg19-dcbb9e9d.pth) as --vgg-weights or leave the option out")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read VGG19 weights {str(p)!r} ({type(exc).__name__}); "
                        "pass torchvision's vgg19 state-dict .pth") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{str(p)!r} does not hold a state dict; pass torchvision's vgg19 state-dict .pth")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if not any(k.startswith("features.") for k in sd):
        sd = {f"features.{k}": v for k, v in sd.items()}
    model = VGG19Features()
    want = model.state_dict()
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}
    missing = [k for k in want if k not in feats]
    extra = [k for k in feats if k not in want]
    shaped = [k for k in want if k in feats and tuple(feats[k].shape) != tuple(want[k].shape)]
    if missing or extra or shaped:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)):
            if keys:
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:3])}")
        raise UserError(f"{str(p)!r} is not a torchvision vgg19 state dict ({'; '.join(parts)}); pass vgg19's "
                        "weights, not vgg16 or vgg19_bn")
    model.load_state_dict(feats, strict=True)
    for q in model.parameters():
        q.requires_grad_(False)
    return model.eval()


class VGGLoss(nn.Module):
    """Perceptual loss: sum_i w_i L1(phi_i(fake), phi_i(real)) with the official weights (times lambda outside)."""

    def __init__(self, vgg: VGG19Features):
        super().__init__()
        self.vgg = vgg

    def train(self, mode: bool = True) -> VGGLoss:  # the trunk stays frozen in eval mode
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fx = self.vgg(fake)
        with torch.no_grad():
            fy = self.vgg(real)
        loss = fake.new_zeros((), dtype=torch.float32)
        for w, a, b in zip(VGG_WEIGHTS, fx, fy):
            loss = loss + w * F.l1_loss(a.float(), b.float())
        return loss
