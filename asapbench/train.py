"""GAN training of any registered generator with the ASAP-Net paper's recipe (docs/paper-numbers.md).

Recipe: multi-scale PatchGAN discriminator on ``concat(generator input, image)`` (2 scales below
1024 pixels, 3 from 1024), hinge loss, discriminator feature matching (lambda 10), VGG19 perceptual
loss (lambda 10, weights from ``vgg_weights``), Adam betas (0, 0.999), lr 1e-4 (G) / 4e-4 (D),
Xavier-normal init with gain 0.02 (the official ``init_variance``), lr constant then decayed
linearly to 0 over the last third of the steps (300 epochs, decay over the last 100).

One iteration: G step on ``fake = G(x)`` (D frozen), then D step on ``fake.detach()`` (as pix2pixHD).

Files under ``out``:

- ``latest_net_G.pth``: the generator's plain state dict in the official key format;
- ``train_state.pt``: G, D, both optimisers, schedulers, AMP scalers, step, epoch, position in the
  epoch, and the python/numpy/torch RNG states of every rank (everything for an exact resume);
- ``run.json``: model, preset, overrides, dataset and the resolved configuration;
- ``losses.csv`` (one row per step), ``samples/step_XXXXXXX.png`` (label | output | photo).

A run id drawn when the run starts goes into run.json, train_state.pt and every row of losses.csv
(run.json also records the SHA-256 of the generator file it saved). ``--resume`` first checks that
the four files belong to one run (:func:`check_run_folder`) and refuses, writing nothing, when they
do not. Runs written before run ids existed resume when their files otherwise agree (same model,
run.json no later than the state, the generator's tensor names and shapes those of the state); they
keep the id ``legacy``.

A run locks ``out`` (:class:`asapbench.fsutil.FolderLock`, as `run` locks its --out). A checkpoint
writes train_state.pt, latest_net_G.pth, then run.json (step and generator SHA-256); a resume rewrites
the generator and run.json when a kill left them behind the state (:func:`_sync_generator`). A fresh
run that fails before its first checkpoint removes what it wrote (:func:`_remove_failed_start`). The
first non-finite loss (or NaN/Inf weights about to be saved) stops the run with
:class:`TrainingDiverged` (exit 1), keeping the last finite checkpoint.

Every file is written to a temporary name and renamed; a full disk while saving a checkpoint is one
line (the folder and the space needed) and leaves the previous checkpoint intact. SIGINT/SIGTERM finish the current step,
save and stop. Distributed: run under ``torchrun`` (DistributedDataParallel, a DistributedSampler
per epoch, gloo on CPU / nccl on GPU); rank 0 writes, ``--batch-size`` is per process.

Code: :func:`train` opens the run (:func:`_open_run`: resume or fresh) and hands over to
:func:`_train`, which builds it stage by stage (:func:`_build_models` with :func:`_build_generator`,
the one place that constructs the generator; :func:`_build_data`; :func:`_build_optim`;
:func:`_restore`) and runs :func:`_loop`: one :func:`_train_iteration` per step, losses.csv through
:class:`_LossLog`, :func:`_save_checkpoint`, signals through :class:`_StopOnSignal`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import platform
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from asapbench.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

STATE_FILE = "train_state.pt"
GEN_FILE = "latest_net_G.pth"
RUN_FILE = "run.json"
CSV_FILE = "losses.csv"
LOSS_COLUMNS = ["G_GAN", "G_feat", "G_VGG", "G_L1", "G_total", "D_real", "D_fake"]
CSV_COLUMNS = ["step", "epoch", "lr_G", "lr_D", *LOSS_COLUMNS, "img_per_s", "run_id"]
#: the run id of runs written before run ids existed (their files carry none)
LEGACY_RUN_ID = "legacy"


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------
def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Official ``init_type=xavier``: Xavier-normal(gain) conv/linear weights, zero biases, BN weights N(1, gain).

    Spectral-normalised convolutions get their underlying ``weight_orig`` initialised.
    """
    from torch.nn.utils import parametrize

    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
            if hasattr(m, "weight_orig"):
                w = m.weight_orig
            elif parametrize.is_parametrized(m, "weight"):
                w = m.parametrizations.weight.original
            else:
                w = m.weight
            with torch.no_grad():
                nn.init.xavier_normal_(w, gain=gain)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            with torch.no_grad():
                nn.init.normal_(m.weight, 1.0, gain)
                m.bias.zero_()


class ResumableSampler(Sampler):
    """A :class:`DistributedSampler` per epoch, started at any position, yielding ``(index, epoch)``.

    The order of an epoch depends only on (seed, epoch, world size, rank); the dataset seeds each
    sample's augmentation with (seed, epoch, index). So a run resumed at (epoch, position) sees
    exactly the batches of an uninterrupted run.
    """

    def __init__(self, dataset, world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                        drop_last=False)
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start the next iteration at sample ``skip`` of ``epoch`` (this rank's share)."""
        self.epoch, self.skip = epoch, skip

    def samples_per_epoch(self) -> int:
        return len(self.inner)

    def __iter__(self):
        self.inner.set_epoch(self.epoch)
        for i in list(self.inner)[self.skip:]:
            yield (int(i), self.epoch)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def _lr_lambda(total: int, decay_fraction: float):
    """The lr factor per step: 1, then linearly down to 0 over the last ``decay_fraction`` of ``total`` steps."""
    decay = round(total * decay_fraction)
    start = total - decay

    def factor(step: int) -> float:  # step = number of optimiser updates done so far
        if decay <= 0 or step < start:
            return 1.0
        return max(0.0, (total - step) / decay)

    return factor


@dataclass
class _Dist:
    """This process's place in a torchrun job (world size 1, rank 0 outside one)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_pref: str | None) -> _Dist:
    """Join the torchrun job described by the environment (nccl on GPU, gloo on CPU), if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device_pref is None or device_pref.startswith("cuda"))
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        here = True
    return _Dist(world, rank, local, here)


def _rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states, in a form ``torch.load(weights_only=True)`` reads."""
    st = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": {"name": st[0], "keys": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]),
                  "has_gauss": int(st[3]), "cached_gaussian": float(st[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`_rng_state` returned."""
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save_grid(path: Path, label_rgb: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, max_rows: int = 4) -> None:
    """A PNG grid: one row per sample, columns label | output | photo (all [-1, 1])."""
    from PIL import Image

    from asapbench.fsutil import atomic_write_bytes

    rows = []
    for i in range(min(max_rows, fake.shape[0])):
        rows.append(torch.cat([label_rgb[i], fake[i], real[i]], dim=2))  # (3, H, 3W)
    grid = torch.cat(rows, dim=1)  # (3, rows*H, 3W)
    a = ((grid.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _read_csv_rows(path: Path, max_step: int) -> list[dict[str, str]]:
    """Rows of an existing losses CSV up to ``max_step`` (a torn last line after kill -9 is dropped)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                if None in row or any(v is None or v == "" for v in row.values()):
                    continue
                if int(row["step"]) <= max_step:
                    rows.append(row)
            except (KeyError, ValueError):
                continue
    return rows


def read_losses(out: str | Path) -> list[dict[str, float]]:
    """The losses CSV of a run as a list of ``{column: float}`` (``step`` and ``epoch`` as int)."""
    rows = []
    for r in _read_csv_rows(Path(out) / CSV_FILE, 1 << 62):
        rows.append({k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in r.items() if k != "run_id"})
    return rows


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    out: Path
    step: int
    epoch: int
    total_steps: int
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when stopped by a signal
    images_per_s: float | None = None  # mean over the steps after the first (all ranks together)
    last: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    resumed_from: int | None = None

# ----------------------------------------------------------------------------------------------
# the stages of a run
# ----------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    """Seed torch's, python's and numpy's global random generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _sayer(console, dist: _Dist):
    """A ``say(msg)`` that prints ``train: msg`` on rank 0 (and nothing on the other ranks)."""

    def say(msg: str) -> None:
        if dist.main:
            console.print(f"[bold]train:[/bold] {msg}", highlight=False)

    return say


def _prepare_run_folder(out: Path, dist: _Dist) -> None:
    """Create ``out`` (rank 0) and drop the temporary files of a write cut short by kill -9."""
    from asapbench.fsutil import ensure_writable_dir

    if dist.main:
        ensure_writable_dir(out, "run folder")
        for stale in out.glob(".*.tmp"):
            if any(stale.name.startswith(f".{n}.") for n in (STATE_FILE, GEN_FILE, RUN_FILE, CSV_FILE)):
                stale.unlink(missing_ok=True)
    if dist.enabled:
        torch.distributed.barrier()


def _pick_device(cfg: TrainConfig, dist: _Dist) -> torch.device:
    """``--device`` if given, else this process's GPU (its local rank) if there is one, else the CPU."""
    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", dist.local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist.local_rank)
    return device


def _choose_preset(cfg: TrainConfig) -> tuple[str, dict[str, Any], tuple[int, int]]:
    """(preset, overrides, (H, W)): ``--preset`` (at ``--res`` or its own size), else the configuration
    ``--res`` implies, else the model's default preset at its own size."""
    from asapbench.registry import configure_for_resolution, get_preset

    res = _parse_hw(cfg.res, "--res")
    if cfg.preset is None and res is not None:
        preset, overrides = configure_for_resolution(cfg.model, *res)
        return preset, dict(overrides), res
    p = get_preset(cfg.model, cfg.preset)
    return p.name, {}, res or p.resolution


def _build_generator(cfg: TrainConfig, ds_spec, say) -> tuple[Any, str, dict[str, Any], tuple[int, int], int]:
    """Build the generator ``cfg`` asks for, fitted to the dataset: (model, preset, overrides, (H, W), label_nc).

    The one place that constructs the generator: the preset's label count and instance-edge channel
    follow the data (with a note), and the model must accept H x W.
    """
    import inspect

    from asapbench.registry import build_for_resolution, get_spec, resolve_kwargs

    spec = get_spec(cfg.model)
    preset, overrides, hw = _choose_preset(cfg)
    params = inspect.signature(spec.builder).parameters
    kwargs = resolve_kwargs(cfg.model, preset, **overrides)
    want_nc = ds_spec.label_nc
    if cfg.dataset == "synthetic" and want_nc is None:
        want_nc = kwargs.get("label_nc")
    if want_nc is not None and "label_nc" in params and kwargs.get("label_nc") != want_nc:
        say(f"{cfg.model}:{preset} has label_nc={kwargs.get('label_nc')}; the {cfg.dataset} data has {want_nc} "
            f"labels: training with label_nc={want_nc}")
        overrides["label_nc"] = want_nc
    if ds_spec.has_instances is False and kwargs.get("instance_edge") and "instance_edge" in params:
        say(f"the {cfg.dataset} data has no instance maps: training {cfg.model} without the instance-edge channel")
        overrides["instance_edge"] = False
    model = build_for_resolution(cfg.model, int(hw[0]), int(hw[1]), preset, **overrides)
    label_nc = model.label_nc if model.label_nc is not None else (want_nc or cfg.label_nc or 8)
    if model.input_kind != "image" and model.instance_edge and ds_spec.has_instances is False:
        raise UserError(f"{cfg.model}:{preset} needs instance maps (an instance-edge channel) but the "
                        f"{cfg.dataset} data has none; pick a preset without instance edges")
    return model, preset, overrides, (int(hw[0]), int(hw[1])), int(label_nc)


@dataclass
class _Models:
    """The generator, the discriminator and the VGG loss of a run, and how the generator was configured.

    ``G`` and ``D`` are the plain modules (saved, and D as called in the G step); ``G_run`` and
    ``D_run`` are the ones the steps train through: the same modules, or their DDP wrappers under torchrun.
    """

    G: nn.Module
    D: nn.Module
    vgg_loss: nn.Module | None
    preset: str
    overrides: dict[str, Any]
    hw: tuple[int, int]
    label_nc: int
    num_d: int
    G_run: nn.Module | None = None
    D_run: nn.Module | None = None


def _build_models(cfg: TrainConfig, ds_spec, dist: _Dist, device: torch.device, say, console) -> _Models:
    """Seed, build and initialise G and the multi-scale D on ``device``; the VGG loss when weights are given."""
    from asapbench.losses import VGGLoss, load_vgg19
    from asapbench.models.discriminators import MultiscaleDiscriminator, default_num_d

    _seed_all(cfg.seed)
    G, preset, overrides, (H, W), label_nc = _build_generator(cfg, ds_spec, say)
    init_weights(G, cfg.init_gain)
    num_d = cfg.n_scales_d or default_num_d(H, W)
    D = MultiscaleDiscriminator(G.input_nc + 3, num_d=num_d, ndf=cfg.ndf, spectral=cfg.d_spectral)
    init_weights(D, cfg.init_gain)
    G.to(device).train()
    D.to(device).train()
    vgg_loss = None
    if cfg.lambda_vgg > 0:
        if cfg.vgg_weights:
            vgg_loss = VGGLoss(load_vgg19(cfg.vgg_weights)).to(device)
        elif dist.main:
            console.print("[yellow]warning:[/yellow] no --vgg-weights given: training without the VGG19 perceptual "
                          "loss (lambda 10 in the paper's recipe); pass torchvision's vgg19 state-dict file to "
                          "include it", highlight=False)
    return _Models(G, D, vgg_loss, preset, overrides, (H, W), label_nc, num_d, G_run=G, D_run=D)


def _wrap_for_ddp(models: _Models, dist: _Dist, device: torch.device) -> None:
    """Under torchrun, train through DistributedDataParallel wrappers (SyncBatchNorm in G on CUDA).

    Called after a resume has loaded the weights: DDP broadcasts rank 0's parameters when it wraps.
    """
    if not dist.enabled:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    G = models.G
    if device.type == "cuda":
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
    ids = [device.index] if device.type == "cuda" else None
    models.G_run = DDP(G, device_ids=ids)
    models.D_run = DDP(models.D, device_ids=ids)


@dataclass
class _Data:
    """The dataset, its resumable sampler and loader, and the run's length in steps."""

    dataset: Any
    sampler: ResumableSampler
    loader: DataLoader
    steps_per_epoch: int
    total: int


def _build_data(cfg: TrainConfig, models: _Models, dist: _Dist, device: torch.device) -> _Data:
    """The dataset at the generator's size and label count, this rank's sampler, the loader, the number of steps."""
    from asapbench.data import build_dataset

    G = models.G
    use_inst = bool(G.input_kind != "image" and G.instance_edge)
    dataset = build_dataset(
        cfg.dataset, cfg.data, models.hw, models.label_nc,
        contain_dontcare=bool(G.contain_dontcare), use_instances=use_inst,
        preprocess=cfg.preprocess, load_size=_parse_hw(cfg.load_size, "--load-size"), flip=cfg.flip,
        seed=cfg.seed, split=cfg.split, synthetic_size=cfg.synthetic_size)
    sampler = ResumableSampler(dataset, dist.world_size, dist.rank, seed=cfg.seed)
    steps_per_epoch = sampler.samples_per_epoch() // cfg.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"the {cfg.dataset} data has {len(dataset)} samples, fewer than --batch-size "
                        f"{cfg.batch_size} x {dist.world_size} process(es); lower --batch-size")
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # own generator: the global RNG stays untouched
    return _Data(dataset, sampler, loader, steps_per_epoch, total)


#: the optimisation objects of :class:`_Optim`, in the order they are saved and restored
_OPTIM_KEYS = ("opt_G", "opt_D", "sched_G", "sched_D", "scaler_G", "scaler_D")


@dataclass
class _Optim:
    """Adam optimisers, lr schedules and AMP gradient scalers of G and D."""

    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    sched_G: torch.optim.lr_scheduler.LambdaLR
    sched_D: torch.optim.lr_scheduler.LambdaLR
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler

    def state_dicts(self) -> dict[str, Any]:
        """``{name: state dict}`` of every object, for the train state."""
        return {k: getattr(self, k).state_dict() for k in _OPTIM_KEYS}

    def load_state_dicts(self, saved: dict[str, Any]) -> None:
        """Load what :meth:`state_dicts` saved."""
        for k in _OPTIM_KEYS:
            getattr(self, k).load_state_dict(saved[k])

    def follow_total(self, total: int, decay_fraction: float, step: int) -> None:
        """Make the lr schedules follow a (possibly new) number of steps, at ``step``."""
        for s, opt in ((self.sched_G, self.opt_G), (self.sched_D, self.opt_D)):
            s.lr_lambdas = [_lr_lambda(total, decay_fraction)]
            for g, base in zip(opt.param_groups, s.base_lrs):
                g["lr"] = base * s.lr_lambdas[0](step)


def _build_optim(cfg: TrainConfig, models: _Models, total: int, device: torch.device) -> _Optim:
    """Adam for G and D, lr constant then decayed linearly over the last ``decay_fraction`` of ``total``, scalers."""
    betas = (cfg.beta1, cfg.beta2)
    opt_G = torch.optim.Adam([p for p in models.G.parameters() if p.requires_grad], lr=cfg.lr_g, betas=betas)
    opt_D = torch.optim.Adam(models.D.parameters(), lr=cfg.lr_d, betas=betas)
    sched_G = torch.optim.lr_scheduler.LambdaLR(opt_G, _lr_lambda(total, cfg.decay_fraction))
    sched_D = torch.optim.lr_scheduler.LambdaLR(opt_D, _lr_lambda(total, cfg.decay_fraction))
    scaling = cfg.amp and device.type == "cuda"
    scaler_G = torch.amp.GradScaler(device.type, enabled=scaling)
    scaler_D = torch.amp.GradScaler(device.type, enabled=scaling)
    return _Optim(opt_G, opt_D, sched_G, sched_D, scaler_G, scaler_D)


@dataclass
class _Position:
    """Where a run stands: steps done, epoch, batches done in the epoch, and the step it resumed from."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    resumed_from: int | None = None

    def steps_here(self) -> int:
        """Steps done by this process (since the resume)."""
        return self.step - (self.resumed_from or 0)


def _restore(saved_state, cfg: TrainConfig, out: Path, models: _Models, optim: _Optim, data: _Data,
             dist: _Dist, say) -> _Position:
    """Resume: load the weights, optimisation state, position and this rank's RNG states of ``saved_state``.

    A fresh run (``saved_state`` None) seeds each rank instead and starts at step 0.
    """
    if saved_state is None:
        _seed_all(cfg.seed + dist.rank)  # per-rank randomness from here on (dropout etc.)
        return _Position()
    for what, key, module in (("generator", "G", models.G), ("discriminator", "D", models.D)):
        try:
            module.load_state_dict(saved_state[key])
        except RuntimeError:  # a state edited, or written by another version: one line, not the key list
            from asapbench.checkpoint import _shapes, state_dict_mismatch

            diff = state_dict_mismatch(_shapes(module.state_dict()), _shapes(saved_state[key]))
            counts = ", ".join(f"{len(k)} {label}" for k, label in zip(diff, ("missing", "unexpected", "mis-shaped")) if k)
            raise UserError(f"the {what} in {str(out / STATE_FILE)!r} does not fit {cfg.model}:{models.preset} as "
                            f"its saved settings build it ({counts or 'the weights do not load'} tensors); "
                            "train into another --out") from None
    optim.load_state_dicts(saved_state)
    pos = _Position(int(saved_state["step"]), int(saved_state["epoch"]), int(saved_state["batch_in_epoch"]))
    old_world = int(saved_state.get("world_size", 1))
    if old_world != dist.world_size or int(saved_state.get("dataset_len", len(data.dataset))) != len(data.dataset):
        say("the number of processes or of samples changed since the checkpoint: the data order of this "
            "epoch differs from an uninterrupted run")
        pos.batch_in_epoch = min(pos.batch_in_epoch * old_world // dist.world_size, data.steps_per_epoch)
    if pos.batch_in_epoch >= data.steps_per_epoch:
        pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
    rngs = saved_state["rng"]
    _set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    pos.resumed_from = pos.step
    optim.follow_total(data.total, cfg.decay_fraction, pos.step)  # the lr factor follows the new total
    say(f"resuming {str(out)!r} at step {pos.step} (epoch {pos.epoch}, batch {pos.batch_in_epoch}) of {data.total}")
    return pos


@dataclass
class _Run:
    """Everything one training run works with, built by the stages above."""

    cfg: TrainConfig
    out: Path
    dist: _Dist
    device: torch.device
    say: Callable[[str], None]
    console: Any
    models: _Models
    data: _Data
    optim: _Optim
    pos: _Position
    autocast: Any = None
    run_info: dict[str, Any] = field(default_factory=dict)
    run_id: str = LEGACY_RUN_ID  # drawn when the run starts; in run.json, train_state.pt and losses.csv
    saved_step: int | None = None  # the step of the last complete checkpoint in ``out``
    samples_written: list[Path] = field(default_factory=list)  # sample grids this process wrote


def _run_info(run: _Run) -> dict[str, Any]:
    """The content of run.json, less the step, epoch and time of each save."""
    cfg, G = run.cfg, run.models.G
    H, W = run.models.hw
    return {
        "run_id": run.run_id, "model": cfg.model, "preset": run.models.preset, "overrides": run.models.overrides, "config": dict(G.config),
        "resolution": [H, W], "label_nc": run.models.label_nc, "input_nc": G.input_nc, "input_kind": G.input_kind,
        "instance_edge": bool(G.instance_edge), "dataset": {"kind": cfg.dataset, "data": cfg.data,
                                                            "samples": len(run.data.dataset), "split": cfg.split},
        "discriminator": {"num_d": run.models.num_d, "ndf": cfg.ndf, "spectral": cfg.d_spectral,
                          "input_nc": G.input_nc + 3},
        "vgg_loss": run.models.vgg_loss is not None, "world_size": run.dist.world_size,
        "total_steps": run.data.total, "steps_per_epoch": run.data.steps_per_epoch, "args": dataclasses.asdict(cfg),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }


# ----------------------------------------------------------------------------------------------
# files and signals
# ----------------------------------------------------------------------------------------------
class _LossLog:
    """losses.csv, open for appending while the run goes (rank 0; the other ranks write nothing).

    On entry the file is rewritten with its header and, on resume, its rows up to the checkpoint's
    step (rows logged after the last checkpoint, and a line torn by kill -9, are dropped). Every row
    carries the run id in its last column (rows of a legacy run get :data:`LEGACY_RUN_ID`).
    """

    def __init__(self, path: Path, resumed_at: int | None, main: bool, run_id: str = LEGACY_RUN_ID):
        self.path, self.resumed_at, self.main, self.run_id = path, resumed_at, main, run_id
        self.file = None
        self.writer = None

    def __enter__(self) -> Self:
        from asapbench.fsutil import atomic_write_text

        if self.main:
            rows = _read_csv_rows(self.path, self.resumed_at) if self.resumed_at is not None else []
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({**{k: r.get(k, "") for k in CSV_COLUMNS}, "run_id": self.run_id})
            atomic_write_text(self.path, buf.getvalue())
            self.file = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=CSV_COLUMNS, lineterminator="\n")
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (tagged with the run id) and flush it."""
        if self.writer is not None:
            self.writer.writerow({**row, "run_id": self.run_id})
            self.file.flush()

    def flush(self) -> None:
        """Flush what was written (a no-op once closed)."""
        if self.file is not None and not self.file.closed:
            self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


class _StopOnSignal:
    """While active, SIGINT/SIGTERM ask the loop to finish the current step, save and stop.

    ``sig`` is the signal received (None if none); a second signal aborts at once (KeyboardInterrupt).
    Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self):
        self.sig: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.sig is not None:
            raise KeyboardInterrupt  # a second signal aborts at once
        self.sig = signum

    def __enter__(self) -> Self:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def _save_checkpoint(run: _Run, log: _LossLog) -> None:
    """Write train_state.pt (with every rank's RNG states), latest_net_G.pth and run.json; flush losses.csv.

    Every rank takes part (RNG states are gathered, then a barrier); rank 0 writes. Each file goes to a
    temporary name first, so a full disk leaves the previous checkpoint intact: UserError naming the
    folder and the space the checkpoint needs.
    """
    from asapbench.checkpoint import save_generator
    from asapbench.fsutil import atomic_torch_save

    dist, pos, m = run.dist, run.pos, run.models
    rng = _rng_state()
    if dist.enabled:
        rngs = [None] * dist.world_size
        torch.distributed.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if dist.main:
        state = {
            "version": 1, "run_id": run.run_id, "step": pos.step, "epoch": pos.epoch,
            "batch_in_epoch": pos.batch_in_epoch, "world_size": dist.world_size,
            "dataset_len": len(run.data.dataset), "total_steps": run.data.total,
            "G": m.G.state_dict(), "D": m.D.state_dict(), **run.optim.state_dicts(),
            "rng": rngs, "config": dataclasses.asdict(run.cfg),
        }
        try:
            atomic_torch_save(state, run.out / STATE_FILE)
            save_generator(m.G, run.out / GEN_FILE)
            _write_run_json(run, pos.step, pos.epoch)
            log.flush()
        except (OSError, RuntimeError) as exc:
            _raise_if_disk_full(exc, run, state)
            raise
        run.saved_step = pos.step
    if dist.enabled:
        torch.distributed.barrier()


def _write_run_json(run: _Run, step: int, epoch: int) -> None:
    """run.json: the run's configuration, the step and epoch of the checkpoint, the generator file's SHA-256."""
    from asapbench.fsutil import atomic_write_json, sha256_file

    atomic_write_json(run.out / RUN_FILE, {**run.run_info, "step": step, "epoch": epoch,
                                           "generator_sha256": sha256_file(run.out / GEN_FILE),
                                           "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _sync_generator(run: _Run, saved_state: dict[str, Any]) -> None:
    """On resume, make latest_net_G.pth the generator of the state's step.

    A checkpoint writes train_state.pt, then latest_net_G.pth, then run.json (the step and the SHA-256 of
    the generator file). A kill between them leaves a generator (or a run.json) of the step before: when
    run.json does not record the state's step with the generator file's SHA-256, both are rewritten from
    the state (the generator ``run.models.G`` now holds).
    """
    import json

    from asapbench.checkpoint import save_generator
    from asapbench.fsutil import sha256_file

    step, gen = int(saved_state["step"]), run.out / GEN_FILE
    try:
        info = json.loads((run.out / RUN_FILE).read_text())
        if info.get("step") == step and info.get("generator_sha256") == sha256_file(gen):
            return
    except (OSError, ValueError, AttributeError):
        pass
    save_generator(run.models.G, gen)
    _write_run_json(run, step, int(saved_state["epoch"]))
    run.say(f"{GEN_FILE} or {RUN_FILE} was not that of the checkpoint's step {step} (a save was cut short): "
            f"rewrote both from {STATE_FILE}")


def _raise_if_disk_full(exc: BaseException, run: _Run, state: dict[str, Any]) -> None:
    """UserError (one line: folder, space needed, the checkpoint still there) when ``exc`` means a full disk."""
    from asapbench.fsutil import format_bytes, is_out_of_space, tensor_nbytes

    needed = tensor_nbytes(state) + tensor_nbytes(state["G"])  # the state, then the generator file
    if not is_out_of_space(exc, run.out, needed):
        return
    kept = (f"the checkpoint of step {run.saved_step} is intact: after freeing space, continue with --resume"
            if run.saved_step is not None else "no checkpoint was saved yet")
    raise UserError(f"no space left in {str(run.out)!r} to save the checkpoint of step {run.pos.step}: it needs "
                    f"about {format_bytes(needed)} free there; {kept}") from None


def _save_sample(run: _Run, batch: dict[str, Any], step: _StepOut) -> None:
    """samples/step_XXXXXXX.png: label (or input image) | output | photo of the step's batch."""
    from asapbench.data import colorize_labels

    G = run.models.G
    lab = step.x if G.input_kind == "image" else colorize_labels(batch["label"].to(run.device), run.models.label_nc)
    path = run.out / "samples" / f"step_{run.pos.step:07d}.png"
    _save_grid(path, lab, step.fake, step.real)
    run.samples_written.append(path)


# ----------------------------------------------------------------------------------------------
# one iteration
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def _progress_bar(run: _Run):
    """The rich progress bar (rank 0, unless ``--no-progress``): ``train``, the bar, steps done of all, elapsed
    and remaining time, then the epoch, G and D losses with their terms, and the speed. A narrow terminal
    loses the loss terms, the elapsed time, the epoch and the bar (in that order) before any number is cut."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from asapbench.ui import FitProgress

    bar, elapsed = BarColumn(bar_width=30), TimeElapsedColumn()
    epoch, terms = TextColumn("{task.fields[epoch]}"), TextColumn("{task.fields[terms]}")
    return FitProgress(TextColumn("[bold]train[/bold]"), bar, MofNCompleteColumn(), elapsed, TimeRemainingColumn(),
                       epoch, TextColumn("{task.fields[losses]}"), terms, TextColumn("{task.fields[speed]}"),
                       drop=(terms, elapsed, epoch, bar), console=run.console,
                       disable=not (run.dist.main and run.cfg.progress), transient=False)


#: the progress bar's text fields before the first step
NO_INFO = {"epoch": "", "losses": "", "terms": "", "speed": ""}


def _progress_info(epoch: int, last: dict[str, float], ips: float, with_vgg: bool) -> dict[str, str]:
    """The progress bar's text fields: epoch, G and D losses, G's terms, speed."""
    vgg = f" vgg {last['G_VGG']:.3f}" if with_vgg else ""
    return {"epoch": f"ep {epoch}", "losses": f"G {last['G_total']:.3f} D {last['D_real'] + last['D_fake']:.3f}",
            "terms": f"(G: gan {last['G_GAN']:.3f} feat {last['G_feat']:.3f}{vgg})", "speed": f"{ips:.2f} img/s"}


@dataclass
class _LoopEnd:
    """How the loop ended: the step last saved (-1: none), the speeds after the first step, the last losses."""

    saved_at: int
    speeds: list[float] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)


def _loop(run: _Run, log: _LossLog, stop: _StopOnSignal) -> _LoopEnd:
    """Train up to the last step or a stop: log every step, save samples and checkpoints on schedule."""
    cfg, pos, data = run.cfg, run.pos, run.data
    end = _LoopEnd(saved_at=pos.step if pos.resumed_from is not None else -1)
    it = None
    try:
        with _progress_bar(run) as progress:
            task = progress.add_task("train", total=data.total, completed=pos.step, **NO_INFO)
            while pos.step < data.total:
                if it is None:
                    data.sampler.set_position(pos.epoch, pos.batch_in_epoch * cfg.batch_size)
                    it = iter(data.loader)
                t0 = time.perf_counter()
                batch = _next_batch(it)
                res = _train_iteration(run, batch)
                pos.step += 1
                pos.batch_in_epoch += 1
                vals, stop_asked = _mean_over_ranks(res.losses, stop.sig is not None, run.dist)
                bad = [f"{k} {v}" for k, v in zip(LOSS_COLUMNS, vals) if not math.isfinite(v)]
                if bad:
                    raise _diverged(run, f"non-finite loss ({', '.join(bad)})")
                if run.device.type == "cuda":
                    torch.cuda.synchronize(run.device)
                ips = cfg.batch_size * run.dist.world_size / (time.perf_counter() - t0)
                if pos.steps_here() > 1:
                    end.speeds.append(ips)
                end.last = dict(zip(LOSS_COLUMNS, vals))
                log.write({"step": pos.step, "epoch": pos.epoch, "lr_G": repr(res.lrs[0]), "lr_D": repr(res.lrs[1]),
                           **{k: repr(v) for k, v in end.last.items()}, "img_per_s": f"{ips:.4f}"})
                if run.dist.main and pos.step % cfg.sample_every == 0:
                    _save_sample(run, batch, res)
                if pos.batch_in_epoch >= data.steps_per_epoch:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                    it = None
                progress.update(task, completed=pos.step,
                                **_progress_info(pos.epoch, end.last, ips, run.models.vgg_loss is not None))
                stopping = stop_asked or (cfg.stop_after is not None and pos.steps_here() >= cfg.stop_after)
                if pos.step % cfg.save_every == 0 or pos.step == data.total or stopping:
                    _check_finite_weights(run)
                    _save_checkpoint(run, log)
                    end.saved_at = pos.step
                if stopping:
                    break
    finally:
        it = None  # drop the loader iterator (and its workers) now, also on an error
    return end


def _next_batch(it):
    """The next batch; a UserError a loader worker raised (a bad data file) keeps its own one-line message
    (the DataLoader re-raises it with the worker's traceback as the message)."""
    try:
        return next(it)
    except UserError as exc:
        text = str(exc)
        if "DataLoader worker" not in text.split("\n", 1)[0]:
            raise
        last = text.rstrip().splitlines()[-1]
        raise UserError(last.split("UserError: ", 1)[-1]) from None


class TrainingDiverged(Exception):
    """Training stopped at a non-finite loss (or weights): the CLI prints the message and exits 1.

    ``step`` is the step that went non-finite, ``kept`` the step of the checkpoint left in the run
    folder (None: none was saved, and a fresh run then leaves nothing).
    """

    asapbench_exit = True
    exit_code = 1

    def __init__(self, message: str, step: int, kept: int | None) -> None:
        super().__init__(message)
        self.step, self.kept = step, kept


def _diverged(run: _Run, what: str) -> TrainingDiverged:
    """The TrainingDiverged of ``run`` at its current step (nothing of this step is saved)."""
    step, kept = run.pos.step, run.saved_step
    if kept is not None:
        left = (f"the checkpoint of step {kept} in {str(run.out)!r} is the last finite one and is kept; "
                "lower --lr-g/--lr-d and train again into another --out (a resume repeats the same steps)")
    else:
        left = "no checkpoint had been saved, so nothing is kept; lower --lr-g/--lr-d and train again"
    return TrainingDiverged(f"training diverged at step {step}: {what}; stopped without saving it: {left}",
                            step, kept)


def _check_finite_weights(run: _Run) -> None:
    """TrainingDiverged before a checkpoint would save NaN/Inf weights of G or D (an update that blew up)."""
    from asapbench.checkpoint import non_finite

    for name, module in (("generator", run.models.G), ("discriminator", run.models.D)):
        bad = non_finite(module.state_dict())
        if bad is not None:
            raise _diverged(run, f"non-finite {name} weights ({bad[0]} has {bad[1]} NaN/Inf values)")


def _finish(run: _Run, log: _LossLog, stop_sig: int | None, end: _LoopEnd) -> TrainResult:
    """Report how the run ended (saving once more if it stopped after its last save) as a TrainResult."""
    cfg, pos, total, out = run.cfg, run.pos, run.data.total, run.out
    interrupted = None
    mean_ips = float(np.mean(end.speeds)) if end.speeds else None
    speed = f", {mean_ips:.2f} img/s" if mean_ips else ""
    if pos.step < total and stop_sig is None and cfg.stop_after is not None:  # one line, no "done:" after it
        run.say(f"stopped after {cfg.stop_after} steps as asked (--stop-after), at step {pos.step}/{total}{speed}; "
                f"checkpoint saved in {str(out)!r}; continue with --resume")
    elif stop_sig is not None or (run.dist.enabled and pos.step < total):
        if end.saved_at != pos.step:
            _save_checkpoint(run, log)
        interrupted = signal.Signals(stop_sig).name if stop_sig is not None else "SIGTERM"
        run.say(f"stopped by {interrupted} at step {pos.step}/{total}; checkpoint saved in {str(out)!r}; "
                "continue with --resume")
    else:
        run.say(f"done: {pos.step} steps{speed}; generator in {str(out / GEN_FILE)!r}")
    return TrainResult(out=out, step=pos.step, epoch=pos.epoch, total_steps=total, interrupted=interrupted,
                       images_per_s=mean_ips, last=end.last, checkpoint=out / GEN_FILE, resumed_from=pos.resumed_from)


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
def _open_run(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, dict[str, Any] | None]:
    """(resolved configuration, saved state or None).

    Resume: read ``train_state.pt``, check that the run folder's files belong to that run
    (:func:`check_run_folder`) and resolve ``cfg`` against the saved settings. Fresh run: refuse to
    overwrite a run (or any of its files) in ``out`` and resolve ``cfg`` with the defaults.
    Nothing is written here.
    """
    from asapbench.checkpoint import check_finite, safe_torch_load

    state_path = out / STATE_FILE
    if not cfg.resume:
        if state_path.exists():
            raise UserError(f"{str(out)!r} already holds a training run; pass --resume to continue it, "
                            "or choose another --out")
        present = [n for n in (GEN_FILE, RUN_FILE, CSV_FILE) if (out / n).exists()]
        if present:
            raise UserError(f"{str(out)!r} already holds {', '.join(present)} that a new run would overwrite; "
                            "choose another --out or move those files")
        return resolve_config(cfg), None
    if not state_path.is_file():
        raise UserError(f"nothing to resume in {str(out)!r} (no {STATE_FILE}); train without --resume first")
    try:
        saved_state = safe_torch_load(state_path, "training state")
    except UserError as exc:
        raise UserError(f"{exc}; to keep training, restore {STATE_FILE} from a backup or train into another --out"
                        ) from None
    if not isinstance(saved_state, dict) or not {"config", "G", "D", "step"} <= set(saved_state):
        raise UserError(f"{str(state_path)!r} is not a training state written by `asapbench train`; "
                        "train into another --out")
    check_run_folder(out, saved_state)
    check_finite(saved_state["G"], f"{str(state_path)!r} (the generator)")
    check_finite(saved_state["D"], f"{str(state_path)!r} (the discriminator)")
    return resolve_config(cfg, saved_state["config"]), saved_state


def _describe(run_id: str, model: Any, step: Any) -> str:
    return f"run {run_id}" + (f", {model}" if model else "") + (f", step {step}" if step is not None else "")


def check_run_folder(out: Path, state: dict[str, Any]) -> None:
    """Check, before anything is written, that run.json, losses.csv and latest_net_G.pth belong to the run
    of ``state`` (the train_state.pt of ``out``); UserError naming the files that disagree otherwise.

    Every file carries the run id drawn when the run started (the generator file, a plain state dict,
    is tied to it through run.json's ``generator_sha256``, or by holding exactly the state's
    generator). Runs from before run ids read as :data:`LEGACY_RUN_ID`. For every run, run.json must
    also name the state's model and a step no later than the state's (it is written after it), and the
    generator's tensors must have the state's names and shapes. A file that is absent agrees (a kill
    before the first checkpoint completed leaves some out; nothing of another run can be lost).
    """
    from asapbench.fsutil import sha256_file

    sid = str(state.get("run_id") or LEGACY_RUN_ID)
    smodel = (state.get("config") or {}).get("model")
    sstep = int(state.get("step", 0))
    mine = f"{STATE_FILE} ({_describe(sid, smodel, sstep)})"
    bad: list[str] = []
    info: dict[str, Any] = {}
    run_json = out / RUN_FILE
    if run_json.exists():
        from asapbench.fsutil import BadJsonFile, read_json

        try:
            info = read_json(run_json, RUN_FILE)
            if not isinstance(info, dict):
                raise BadJsonFile("", "not an object")
        except BadJsonFile as exc:  # unreadable, not JSON, too large or nested too deeply
            info = {}
            bad.append(f"{RUN_FILE} (unreadable: {exc.why})")
        else:
            rid = str(info.get("run_id") or LEGACY_RUN_ID)
            step = info.get("step")
            if rid != sid or (smodel and info.get("model") != smodel) or (isinstance(step, int) and step > sstep):
                bad.append(f"{RUN_FILE} ({_describe(rid, info.get('model'), step)})")
    csv_path = out / CSV_FILE
    if csv_path.exists():
        try:
            text = csv_path.read_text()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]  # a line torn by kill -9 (its run id may be cut short)
            reader = csv.DictReader(io.StringIO(text, newline=""))
            ids = {r.get("run_id") for r in reader if r.get("run_id")} if "run_id" in (reader.fieldnames or []) \
                else {LEGACY_RUN_ID}
        except (OSError, UnicodeDecodeError, csv.Error):
            ids = {"(unreadable)"}
        if ids - {sid}:
            bad.append(f"{CSV_FILE} (run {', '.join(sorted(ids - {sid}))})")
    gen = out / GEN_FILE
    if gen.exists():
        trusted = info if not any(b.startswith(RUN_FILE) for b in bad) else {}
        if not _generator_agrees(gen, state, trusted, sha256_file):
            bad.append(f"{GEN_FILE} (not a generator this run saved)")
    if bad:
        raise UserError(f"cannot resume {str(out)!r}: its files belong to different runs: {mine} vs "
                        f"{'; '.join(bad)}; nothing was changed: train into another --out (copy the files "
                        "you want to keep there first)")


def _generator_agrees(gen: Path, state: dict[str, Any], info: dict[str, Any], sha256_file) -> bool:
    """Whether latest_net_G.pth is the one this run saved last (the state's G, or the file run.json names)."""
    from asapbench.checkpoint import read_state_dict

    G = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state["G"].items()}
    if info.get("generator_sha256"):
        try:
            if sha256_file(gen) == info["generator_sha256"]:
                return True
        except OSError:
            return False
    try:
        sd = read_state_dict(gen)
    except UserError:
        return False
    if set(sd) != set(G) or any(tuple(sd[k].shape) != tuple(G[k].shape) for k in sd):
        return False
    if state.get("run_id") is None:
        return True  # a legacy run: names and shapes are all there is to compare
    return all(torch.equal(sd[k], G[k].cpu()) for k in sd)


def train(cfg: TrainConfig, console=None) -> TrainResult:
    """Train a generator as configured; returns when done or after a SIGINT/SIGTERM (checkpoint saved).

    Raises UserError for bad settings or data. See the module docstring for the files written.
    """
    out = Path(cfg.out) if cfg.out else None
    if out is None:
        raise UserError("training needs --out (the run folder, e.g. runs/NAME)")
    lock = _lock_run_folder(cfg, out)
    try:
        cfg, saved_state = _open_run(cfg, out)
        dist = _setup_distributed(cfg.device)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        return _train(cfg, out, saved_state, dist, console)
    except (OSError, RuntimeError) as exc:
        from asapbench.fsutil import is_out_of_space

        if not is_out_of_space(exc):
            raise
        raise UserError(f"no space left in {str(out)!r} while writing the run's files ({_first_line(exc)}); "
                        "free some space there and continue with --resume") from None
    finally:
        if dist.initialized_here:
            import torch.distributed as tdist

            tdist.destroy_process_group()
        if lock is not None:
            lock.release()


def _lock_run_folder(cfg: TrainConfig, out: Path):
    """Create ``out`` and lock it (:class:`asapbench.fsutil.FolderLock`) for this run, as `run` locks its --out.

    Rank 0 locks for a torchrun job. A resume of a folder that does not exist locks nothing (there is
    nothing to resume: :func:`_open_run` says so). Returns the lock, or None.
    """
    from asapbench.fsutil import FolderLock, ensure_writable_dir

    if int(os.environ.get("RANK", "0")) != 0 or (cfg.resume and not out.is_dir()):
        return None
    ensure_writable_dir(out, "--out folder")
    return FolderLock(out, "--out").acquire()


def _first_line(exc: BaseException) -> str:
    from asapbench.checkpoint import _first_line as first

    return first(exc, 120) or type(exc).__name__


def _train(cfg: TrainConfig, out: Path, saved_state, dist: _Dist, console) -> TrainResult:
    """Build the run stage by stage (folder, device, models, data, optimisation, resume), then train it."""
    from rich.console import Console

    from asapbench.data import describe_dataset

    console = console or Console(stderr=True)
    say = _sayer(console, dist)
    _prepare_run_folder(out, dist)
    device = _pick_device(cfg, dist)
    ds_spec = describe_dataset(cfg.dataset, cfg.data, cfg.label_nc, cfg.split)
    models = _build_models(cfg, ds_spec, dist, device, say, console)
    data = _build_data(cfg, models, dist, device)
    if cfg.save_every is None:
        cfg.save_every = auto_save_every(data.total)
    optim = _build_optim(cfg, models, data.total, device)
    pos = _restore(saved_state, cfg, out, models, optim, data, dist, say)
    _wrap_for_ddp(models, dist, device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    run_id = str(saved_state.get("run_id") or LEGACY_RUN_ID) if saved_state is not None else uuid.uuid4().hex[:12]
    run = _Run(cfg, out, dist, device, say, console, models, data, optim, pos,
               autocast=torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp), run_id=run_id,
               saved_step=pos.resumed_from)
    run.run_info = _run_info(run)
    if saved_state is not None and dist.main:
        _sync_generator(run, saved_state)
    try:  # nothing above writes in out (but its folder)
        with _LossLog(out / CSV_FILE, pos.resumed_from, dist.main, run_id) as log, _StopOnSignal() as stop:
            H, W = models.hw
            say(f"{cfg.model}:{models.preset} at {H}x{W}, {sum(p.numel() for p in models.G.parameters()) / 1e6:.2f}M "
                f"params; D {models.num_d} scales; {cfg.dataset}: {len(data.dataset)} samples, {data.steps_per_epoch} "
                f"steps/epoch; {data.total} steps; batch {cfg.batch_size} x {dist.world_size} on {device}")
            end = _loop(run, log, stop)
    except BaseException:
        if saved_state is None and dist.main and run.saved_step is None:
            _remove_failed_start(out, run)
        raise
    return _finish(run, log, stop.sig, end)


def _remove_failed_start(out: Path, run: _Run) -> None:
    """A fresh run that fails before its first checkpoint leaves nothing: remove the losses.csv and the
    samples it wrote (the CLI then removes the folders it created, if empty), so that the retry the
    error suggests is not refused."""
    for f in [out / CSV_FILE, *run.samples_written]:
        try:
            f.unlink()
        except OSError:
            pass
    try:
        (out / "samples").rmdir()  # only if empty: never another run's samples
    except OSError:
        pass
