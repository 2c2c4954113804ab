"""The configuration of a training run: the run folder's file names and loss columns, :class:`TrainConfig`,
its defaults and bounds, and :func:`resolve_config` (fresh run: the defaults; resume: the saved settings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from asapbench.errors import UserError

STATE_FILE = "train_state.pt"
GEN_FILE = "latest_net_G.pth"
RUN_FILE = "run.json"
CSV_FILE = "losses.csv"
LOSS_COLUMNS = ["G_GAN", "G_feat", "G_VGG", "G_L1", "G_total", "D_real", "D_fake"]
CSV_COLUMNS = ["step", "epoch", "lr_G", "lr_D", *LOSS_COLUMNS, "img_per_s", "run_id"]
#: the run id of runs written before run ids existed (their files carry none)
LEGACY_RUN_ID = "legacy"


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the default" (or, on resume, "as saved")."""

    model: str | None = None
    dataset: str | None = None
    out: str | None = None
    data: str | None = None
    preset: str | None = None
    res: str | None = None  # "HxW"
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    amp: bool | None = None
    save_every: int | None = None
    sample_every: int | None = None
    resume: bool = False
    vgg_weights: str | None = None
    label_nc: int | None = None
    seed: int | None = None
    n_scales_d: int | None = None
    lambda_feat: float | None = None
    lambda_vgg: float | None = None
    lambda_l1: float | None = None
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    decay_fraction: float | None = None
    init_gain: float | None = None
    d_spectral: bool | None = None
    ndf: int | None = None  # discriminator width (64 in the paper)
    preprocess: str | None = None
    load_size: str | None = None  # "HxW"
    flip: bool | None = None
    split: str | None = None
    synthetic_size: int | None = None
    workers: int | None = None
    device: str | None = None
    progress: bool | None = None
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in this process


DEFAULTS: dict[str, Any] = {
    "batch_size": 1, "amp": False, "save_every": None, "sample_every": 500, "seed": 0, "lambda_feat": 10.0,
    "lambda_vgg": 10.0, "lambda_l1": 0.0, "lr_g": 1e-4, "lr_d": 4e-4, "beta1": 0.0, "beta2": 0.999,
    "decay_fraction": 1 / 3, "init_gain": 0.02, "d_spectral": True, "ndf": 64, "preprocess": "fixed", "flip": True,
    "split": "train", "synthetic_size": 100, "workers": 0, "progress": True,
}
DEFAULT_EPOCHS = 300  # the paper: 300 epochs, linear decay over the last 100

#: settings that may change when a run is resumed; all others must match the saved run
RESUME_CHANGEABLE = {"out", "resume", "epochs", "steps", "save_every", "sample_every", "workers", "device",
                     "progress", "data", "vgg_weights", "stop_after"}

#: the numeric options checked against :data:`asapbench.bounds.RANGES`
BOUNDED = ("epochs", "steps", "batch_size", "save_every", "sample_every", "label_nc", "seed", "n_scales_d",
           "lambda_feat", "lambda_vgg", "lambda_l1", "lr_g", "lr_d", "decay_fraction", "ndf", "synthetic_size",
           "workers", "stop_after")


def auto_save_every(total_steps: int) -> int:
    """The default ``--save-every``: a tenth of the run's steps, at most 1000 (a short run saves within itself,
    a long one does not write its checkpoints every few seconds)."""
    return max(1, min(1000, -(-int(total_steps) // 10)))


def _parse_hw(text: str | None, what: str) -> tuple[int, int] | None:
    """``"HxW"`` (or an (H, W) pair) as ``(H, W)``; None stays None (``what``: the option, for the caller)."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    from asapbench.resolution import parse_resolution

    return parse_resolution(text)


def resolve_config(cfg: TrainConfig, saved: dict[str, Any] | None = None) -> TrainConfig:
    """Fill unset fields with the defaults (fresh run) or the saved run's values (resume).

    On resume, a setting that is given and differs from the saved run raises UserError, except
    the ones in :data:`RESUME_CHANGEABLE`.
    """
    from asapbench.bounds import check_all

    check_all(**{k: getattr(cfg, k) for k in BOUNDED})  # the values given, before any is merged or compared
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    if saved is not None:
        conflicts = []
        for k, v in given.items():
            if k in RESUME_CHANGEABLE or k not in saved:
                continue
            if _norm(v) != _norm(saved[k]):
                conflicts.append(f"--{k.replace('_', '-')} {v} (saved run: {saved[k]})")
        if conflicts:
            raise UserError("cannot resume with different settings: " + ", ".join(conflicts)
                            + "; leave them out to use the saved ones, or train into a new --out")
        merged = {**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}, **given}
        if "steps" in given and "epochs" not in given:
            merged["epochs"] = None
        if "epochs" in given and "steps" not in given:
            merged["steps"] = None
    else:
        merged = {**DEFAULTS, **given}
    out = TrainConfig(**merged)
    for k, v in DEFAULTS.items():
        if getattr(out, k) is None:
            setattr(out, k, v)
    if out.model is None or out.dataset is None or out.out is None:
        raise UserError("training needs --model, --dataset and --out")
    if cfg.stop_after is None:
        out.stop_after = None  # never carried over from the saved run
    if cfg.steps is not None and cfg.epochs is not None:
        raise UserError("pass either --steps or --epochs, not both")
    return out


def _norm(v):
    """A setting in comparable form: lists for tuples, ints for integral floats (JSON/CLI round trips)."""
    if isinstance(v, (tuple, list)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
