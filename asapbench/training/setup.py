"""Setting up a training run: weight init, the resumable sampler, the lr schedule, distributed set-up,
seeding and RNG states, and the stages that build a run (device, generator and discriminator, data,
optimisers, restoring a checkpoint) into a :class:`_Run`."""

from __future__ import annotations

import dataclasses
import os
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from asapbench.errors import UserError
from asapbench.training.config import (
    CSV_FILE,
    DEFAULT_EPOCHS,
    GEN_FILE,
    LEGACY_RUN_ID,
    RUN_FILE,
    STATE_FILE,
    TrainConfig,
    _parse_hw,
)

if TYPE_CHECKING:
    from collections.abc import Callable

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
