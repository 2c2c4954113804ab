"""One training iteration: the generator step (D frozen), then the discriminator step on the detached
output (as pix2pixHD), then one lr-schedule step; and the losses averaged over the processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from asapbench.errors import UserError
from asapbench.training.setup import _Dist, _Run


@dataclass
class _StepOut:
    """What one iteration produced: the losses (LOSS_COLUMNS order), the lrs it used, input, output, photo."""

    losses: torch.Tensor
    lrs: tuple[float, float]
    x: torch.Tensor
    fake: torch.Tensor
    real: torch.Tensor


def _g_step(run: _Run, x: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """G step with D frozen; fake and real go through D together (one pass, as SPADE).

    Returns the output and the G losses (GAN, feature matching, VGG, L1, total).
    """
    from asapbench.losses import feature_matching_loss, hinge_g_loss

    cfg, m, o = run.cfg, run.models, run.optim
    for p in m.D.parameters():
        p.requires_grad_(False)
    with run.autocast:
        fake = m.G_run(x)
        if fake.shape != real.shape:
            H, W = m.hw
            raise UserError(f"{cfg.model}:{m.preset} turns a {H}x{W} input into {list(fake.shape[2:])}, "
                            f"not {H}x{W}; pass the --res this preset was built for")
        preds = m.D(torch.cat([torch.cat([x, fake], 1), torch.cat([x, real], 1)], 0))
        pred_fake = [[f[: x.shape[0]] for f in scale] for scale in preds]
        pred_real = [[f[x.shape[0]:] for f in scale] for scale in preds]
        g_gan = hinge_g_loss(pred_fake)
        zero = g_gan.new_zeros(())
        g_feat = feature_matching_loss(pred_fake, pred_real, cfg.lambda_feat) if cfg.lambda_feat else zero
        g_vgg = m.vgg_loss(fake, real) * cfg.lambda_vgg if m.vgg_loss is not None else zero
        g_l1 = F.l1_loss(fake.float(), real) * cfg.lambda_l1 if cfg.lambda_l1 else zero
        g_total = g_gan + g_feat + g_vgg + g_l1
    o.opt_G.zero_grad(set_to_none=True)
    o.scaler_G.scale(g_total).backward()
    o.scaler_G.step(o.opt_G)
    o.scaler_G.update()
    return fake, [g_gan, g_feat, g_vgg, g_l1, g_total]


def _d_step(run: _Run, x: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
    """D step on the same (detached) output; returns the D losses (real, fake)."""
    from asapbench.losses import hinge_d_loss

    m, o = run.models, run.optim
    for p in m.D.parameters():
        p.requires_grad_(True)
    with run.autocast:
        preds = m.D_run(torch.cat([torch.cat([x, fake.detach()], 1), torch.cat([x, real], 1)], 0))
        d_real, d_fake = hinge_d_loss([s[-1][x.shape[0]:] for s in preds], [s[-1][: x.shape[0]] for s in preds])
        d_total = d_real + d_fake
    o.opt_D.zero_grad(set_to_none=True)
    o.scaler_D.scale(d_total).backward()
    o.scaler_D.step(o.opt_D)
    o.scaler_D.update()
    return [d_real, d_fake]


def _train_iteration(run: _Run, batch: dict[str, Any]) -> _StepOut:
    """One iteration on ``batch``: G step, then D step (as pix2pixHD), then one lr-schedule step."""
    from asapbench.data import encode_batch

    x = encode_batch(batch, run.models.G, run.models.label_nc, run.device)  # (N, input_nc, H, W)
    real = batch["image"].to(run.device, non_blocking=True)  # (N, 3, H, W)
    fake, g_losses = _g_step(run, x, real)
    d_losses = _d_step(run, x, fake, real)
    o = run.optim
    lrs = (o.opt_G.param_groups[0]["lr"], o.opt_D.param_groups[0]["lr"])
    o.sched_G.step()
    o.sched_D.step()
    losses = torch.stack([v.float() for v in (*g_losses, *d_losses)]).detach()
    return _StepOut(losses, lrs, x, fake, real)


def _mean_over_ranks(losses: torch.Tensor, stop_here: bool, dist: _Dist) -> tuple[list[float], bool]:
    """The losses averaged over the processes, and whether any process was asked to stop (one all_reduce)."""
    flag = torch.tensor([1.0 if stop_here else 0.0], device=losses.device)
    if dist.enabled:
        packed = torch.cat([losses, flag])
        torch.distributed.all_reduce(packed)
        losses = packed[:-1] / dist.world_size
        flag = packed[-1:]
    return losses.cpu().tolist(), float(flag[0]) > 0
