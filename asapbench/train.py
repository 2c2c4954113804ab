"""GAN training of any registered generator with the ASAP-Net paper's recipe (shared/docs/paper-numbers.md).

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

Every file is written to a temporary name and renamed. SIGINT/SIGTERM finish the current step,
save and stop. Distributed: run under ``torchrun`` (DistributedDataParallel, a DistributedSampler
per epoch, gloo on CPU / nccl on GPU); rank 0 writes, ``--batch-size`` is per process.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import platform
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from asapbench.errors import UserError

STATE_FILE = "train_state.pt"
GEN_FILE = "latest_net_G.pth"
RUN_FILE = "run.json"
CSV_FILE = "losses.csv"
CSV_COLUMNS = ["step", "epoch", "lr_G", "lr_D", "G_GAN", "G_feat", "G_VGG", "G_L1", "G_total", "D_real", "D_fake",
               "img_per_s"]


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


DEFAULTS: dict[str, Any] = dict(
    batch_size=1, amp=False, save_every=1000, sample_every=500, seed=0, lambda_feat=10.0, lambda_vgg=10.0,
    lambda_l1=0.0, lr_g=1e-4, lr_d=4e-4, beta1=0.0, beta2=0.999, decay_fraction=1 / 3, init_gain=0.02,
    d_spectral=True, ndf=64, preprocess="fixed", flip=True, split="train", synthetic_size=100, workers=0, progress=True,
)
DEFAULT_EPOCHS = 300  # the paper: 300 epochs, linear decay over the last 100

#: settings that may change when a run is resumed; all others must match the saved run
RESUME_CHANGEABLE = {"out", "resume", "epochs", "steps", "save_every", "sample_every", "workers", "device",
                     "progress", "data", "vgg_weights", "stop_after"}


def _parse_hw(text: str | None, what: str) -> tuple[int, int] | None:
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    try:
        from asapbench.resolution import parse_resolution
    except ImportError:  # pragma: no cover - resolution.py is part of the package
        parse_resolution = None
    if parse_resolution is not None:
        return parse_resolution(text)
    parts = str(text).lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise UserError(f"cannot read {what} {text!r}; write HEIGHTxWIDTH, e.g. 256x512") from None
    return h, w


def resolve_config(cfg: TrainConfig, saved: dict[str, Any] | None = None) -> TrainConfig:
    """Fill unset fields with the defaults (fresh run) or the saved run's values (resume).

    On resume, a setting that is given and differs from the saved run raises UserError, except
    the ones in :data:`RESUME_CHANGEABLE`.
    """
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
    for name in ("batch_size", "save_every", "sample_every", "synthetic_size", "ndf"):
        if getattr(out, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(out, name)}")
    if cfg.stop_after is None:
        out.stop_after = None  # never carried over from the saved run
    for name in ("steps", "epochs", "stop_after"):
        if getattr(out, name) is not None and getattr(out, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(out, name)}")
    if cfg.steps is not None and cfg.epochs is not None:
        raise UserError("pass either --steps or --epochs, not both")
    if not 0.0 <= out.decay_fraction <= 1.0:
        raise UserError(f"--decay-fraction must lie in [0, 1], got {out.decay_fraction}")
    if out.workers < 0:
        raise UserError("--workers must be >= 0")
    return out


def _norm(v):
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
    decay = int(round(total * decay_fraction))
    start = total - decay

    def factor(step: int) -> float:  # step = number of optimiser updates done so far
        if decay <= 0 or step < start:
            return 1.0
        return max(0.0, (total - step) / decay)

    return factor


@dataclass
class _Dist:
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
        rows.append({k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in r.items()})
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
# model / data setup
# ----------------------------------------------------------------------------------------------
def _setup_model(cfg: TrainConfig, ds_spec, say) -> tuple[Any, str, dict[str, Any], tuple[int, int], int]:
    """Build the generator for ``cfg`` and the dataset: (model, preset, overrides, (H, W), label_nc)."""
    import inspect

    from asapbench.registry import configure_for_resolution, create_generator, get_preset, get_spec, resolve_kwargs

    spec = get_spec(cfg.model)
    res = _parse_hw(cfg.res, "--res")
    if cfg.preset is not None:
        preset, overrides = get_preset(cfg.model, cfg.preset).name, {}
        hw = res or get_preset(cfg.model, preset).resolution
    elif res is not None:
        preset, overrides = configure_for_resolution(cfg.model, *res)
        hw = res
    else:
        p = get_preset(cfg.model, None)
        preset, overrides, hw = p.name, {}, p.resolution
    overrides = dict(overrides)
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
    model = create_generator(cfg.model, preset, **overrides)
    model.check_input_size(*hw)
    label_nc = model.label_nc if model.label_nc is not None else (want_nc or cfg.label_nc or 8)
    if model.input_kind != "image" and model.instance_edge and ds_spec.has_instances is False:
        raise UserError(f"{cfg.model}:{preset} needs instance maps (an instance-edge channel) but the "
                        f"{cfg.dataset} data has none; pick a preset without instance edges")
    return model, preset, overrides, (int(hw[0]), int(hw[1])), int(label_nc)


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, console=None) -> TrainResult:
    """Train a generator as configured; returns when done or after a SIGINT/SIGTERM (checkpoint saved).

    Raises UserError for bad settings or data. See the module docstring for the files written.
    """
    out = Path(cfg.out) if cfg.out else None
    if out is None:
        raise UserError("training needs --out (the run folder, e.g. runs/NAME)")
    state_path, run_path = out / STATE_FILE, out / RUN_FILE

    # ---- resume or fresh start ------------------------------------------------------------
    saved_state = None
    if cfg.resume:
        if not state_path.is_file():
            raise UserError(f"nothing to resume in {str(out)!r} (no {STATE_FILE}); train without --resume first")
        try:
            saved_state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read {str(state_path)!r} ({type(exc).__name__}: {str(exc)[:120]}); "
                            "the file is damaged: delete it to start over") from None
        cfg = resolve_config(cfg, saved_state["config"])
    else:
        if state_path.exists():
            raise UserError(f"{str(out)!r} already holds a training run; pass --resume to continue it, "
                            "or choose another --out")
        if (out / GEN_FILE).exists():
            raise UserError(f"{str(out)!r} already holds a {GEN_FILE} that a new run would overwrite; "
                            "choose another --out or move that file")
        cfg = resolve_config(cfg)

    dist = _setup_distributed(cfg.device)
    try:
        return _train(cfg, out, saved_state, dist, console)
    finally:
        if dist.initialized_here:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, saved_state, dist: _Dist, console) -> TrainResult:  # noqa: C901
    from rich.console import Console

    from asapbench.checkpoint import save_generator
    from asapbench.data import build_dataset, colorize_labels, describe_dataset, encode_batch
    from asapbench.fsutil import atomic_torch_save, atomic_write_json, atomic_write_text, ensure_writable_dir
    from asapbench.losses import VGGLoss, feature_matching_loss, hinge_d_loss, hinge_g_loss, load_vgg19
    from asapbench.models.discriminators import MultiscaleDiscriminator, default_num_d

    console = console or Console(stderr=True)

    def say(msg: str) -> None:
        if dist.main:
            console.print(f"[bold]train:[/bold] {msg}", highlight=False)

    if dist.main:
        ensure_writable_dir(out, "run folder")
        for stale in out.glob(".*.tmp"):  # temporary files of a write cut short by kill -9
            if any(stale.name.startswith(f".{n}.") for n in (STATE_FILE, GEN_FILE, RUN_FILE, CSV_FILE)):
                stale.unlink(missing_ok=True)
    if dist.enabled:
        torch.distributed.barrier()

    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", dist.local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist.local_rank)

    # ---- model -------------------------------------------------------------------------------
    ds_spec = describe_dataset(cfg.dataset, cfg.data, cfg.label_nc, cfg.split)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    G, preset, overrides, (H, W), label_nc = _setup_model(cfg, ds_spec, say)
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

    # ---- data --------------------------------------------------------------------------------
    use_inst = bool(G.input_kind != "image" and G.instance_edge)
    dataset = build_dataset(
        cfg.dataset, cfg.data, (H, W), label_nc,
        contain_dontcare=bool(getattr(G, "contain_dontcare", False)), use_instances=use_inst,
        preprocess=cfg.preprocess, load_size=_parse_hw(cfg.load_size, "--load-size"), flip=cfg.flip,
        seed=cfg.seed, split=cfg.split, synthetic_size=cfg.synthetic_size)
    sampler = ResumableSampler(dataset, dist.world_size, dist.rank, seed=cfg.seed)
    steps_per_epoch = sampler.samples_per_epoch() // cfg.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"the {cfg.dataset} data has {len(dataset)} samples, fewer than --batch-size "
                        f"{cfg.batch_size} x {dist.world_size} process(es); lower --batch-size")
    if cfg.steps is not None:
        total = cfg.steps
    else:
        total = (cfg.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # own generator: the global RNG stays untouched

    # ---- optimisation ------------------------------------------------------------------------
    opt_G = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    sched_G = torch.optim.lr_scheduler.LambdaLR(opt_G, _lr_lambda(total, cfg.decay_fraction))
    sched_D = torch.optim.lr_scheduler.LambdaLR(opt_D, _lr_lambda(total, cfg.decay_fraction))
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler_G = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    scaler_D = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")

    step, epoch, batch_in_epoch = 0, 0, 0
    resumed_from = None
    if saved_state is not None:
        G.load_state_dict(saved_state["G"])
        D.load_state_dict(saved_state["D"])
        opt_G.load_state_dict(saved_state["opt_G"])
        opt_D.load_state_dict(saved_state["opt_D"])
        sched_G.load_state_dict(saved_state["sched_G"])
        sched_D.load_state_dict(saved_state["sched_D"])
        scaler_G.load_state_dict(saved_state["scaler_G"])
        scaler_D.load_state_dict(saved_state["scaler_D"])
        step, epoch = int(saved_state["step"]), int(saved_state["epoch"])
        batch_in_epoch = int(saved_state["batch_in_epoch"])
        old_world = int(saved_state.get("world_size", 1))
        if old_world != dist.world_size or int(saved_state.get("dataset_len", len(dataset))) != len(dataset):
            say("the number of processes or of samples changed since the checkpoint: the data order of this "
                "epoch differs from an uninterrupted run")
            batch_in_epoch = min(batch_in_epoch * old_world // dist.world_size, steps_per_epoch)
        if batch_in_epoch >= steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        rngs = saved_state["rng"]
        _set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
        resumed_from = step
        # the per-step lr factor follows the (possibly new) total number of steps
        for s, opt in ((sched_G, opt_G), (sched_D, opt_D)):
            s.lr_lambdas = [_lr_lambda(total, cfg.decay_fraction)]
            for g, base in zip(opt.param_groups, s.base_lrs):
                g["lr"] = base * s.lr_lambdas[0](step)
        say(f"resuming {str(out)!r} at step {step} (epoch {epoch}, batch {batch_in_epoch}) of {total}")
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # per-rank randomness from here on (dropout etc.)
        random.seed(cfg.seed + dist.rank)
        np.random.seed(cfg.seed + dist.rank)

    G_raw, D_raw = G, D
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
        ids = [device.index] if device.type == "cuda" else None
        G = DDP(G, device_ids=ids)
        D = DDP(D, device_ids=ids)

    # ---- files -------------------------------------------------------------------------------
    csv_path = out / CSV_FILE
    csv_file = None
    if dist.main:
        rows = _read_csv_rows(csv_path, step) if resumed_from is not None else []
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
        atomic_write_text(csv_path, buf.getvalue())
        csv_file = open(csv_path, "a", newline="")
    csv_writer = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS, lineterminator="\n") if csv_file else None

    resolved = dataclasses.asdict(cfg)
    run_info = {
        "model": cfg.model, "preset": preset, "overrides": overrides, "config": dict(G_raw.config),
        "resolution": [H, W], "label_nc": label_nc, "input_nc": G_raw.input_nc, "input_kind": G_raw.input_kind,
        "instance_edge": bool(G_raw.instance_edge), "dataset": {"kind": cfg.dataset, "data": cfg.data,
                                                                 "samples": len(dataset), "split": cfg.split},
        "discriminator": {"num_d": num_d, "ndf": cfg.ndf, "spectral": cfg.d_spectral, "input_nc": G_raw.input_nc + 3},
        "vgg_loss": vgg_loss is not None, "world_size": dist.world_size, "total_steps": total,
        "steps_per_epoch": steps_per_epoch, "args": resolved,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }

    def save(step_: int) -> None:
        rng = _rng_state()
        if dist.enabled:
            gathered = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if dist.main:
            state = {
                "version": 1, "step": step_, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "world_size": dist.world_size, "dataset_len": len(dataset), "total_steps": total,
                "G": G_raw.state_dict(), "D": D_raw.state_dict(),
                "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                "sched_G": sched_G.state_dict(), "sched_D": sched_D.state_dict(),
                "scaler_G": scaler_G.state_dict(), "scaler_D": scaler_D.state_dict(),
                "rng": rngs, "config": resolved,
            }
            atomic_torch_save(state, out / STATE_FILE)
            save_generator(G_raw, out / GEN_FILE)
            atomic_write_json(out / RUN_FILE, {**run_info, "step": step_, "epoch": epoch,
                                                     "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if csv_file is not None:
                csv_file.flush()
        if dist.enabled:
            torch.distributed.barrier()

    # ---- signals -----------------------------------------------------------------------------
    stop = {"sig": None}

    def on_signal(signum, frame):
        if stop["sig"] is not None:
            raise KeyboardInterrupt  # a second signal aborts at once
        stop["sig"] = signum

    old_handlers = {}
    import threading

    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            old_handlers[s] = signal.signal(s, on_signal)

    # ---- loop --------------------------------------------------------------------------------
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                        disable=not (dist.main and cfg.progress), transient=False)
    say(f"{cfg.model}:{preset} at {H}x{W}, {sum(p.numel() for p in G_raw.parameters()) / 1e6:.2f}M params; "
        f"D {num_d} scales; {cfg.dataset}: {len(dataset)} samples, {steps_per_epoch} steps/epoch; "
        f"{total} steps; batch {cfg.batch_size} x {dist.world_size} on {device}")
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp)
    last: dict[str, float] = {}
    speeds: list[float] = []
    it = None
    saved_at = step if resumed_from is not None else -1
    try:
        with progress:
            task = progress.add_task("train", total=total, completed=step, info="")
            while step < total:
                if it is None:
                    sampler.set_position(epoch, batch_in_epoch * cfg.batch_size)
                    it = iter(loader)
                t0 = time.perf_counter()
                batch = next(it)
                x = encode_batch(batch, G_raw, label_nc, device)  # (N, input_nc, H, W)
                real = batch["image"].to(device, non_blocking=True)  # (N, 3, H, W)

                # G step: D frozen; fake and real go through D together (one pass, as SPADE)
                for p in D_raw.parameters():
                    p.requires_grad_(False)
                with autocast:
                    fake = G(x)
                    if fake.shape != real.shape:
                        raise UserError(f"{cfg.model}:{preset} turns a {H}x{W} input into {list(fake.shape[2:])}, "
                                        f"not {H}x{W}; pass the --res this preset was built for")
                    preds = D_raw(torch.cat([torch.cat([x, fake], 1), torch.cat([x, real], 1)], 0))
                    pred_fake = [[f[: x.shape[0]] for f in scale] for scale in preds]
                    pred_real = [[f[x.shape[0]:] for f in scale] for scale in preds]
                    g_gan = hinge_g_loss(pred_fake)
                    zero = g_gan.new_zeros(())
                    g_feat = feature_matching_loss(pred_fake, pred_real, cfg.lambda_feat) if cfg.lambda_feat else zero
                    g_vgg = vgg_loss(fake, real) * cfg.lambda_vgg if vgg_loss is not None else zero
                    g_l1 = F.l1_loss(fake.float(), real) * cfg.lambda_l1 if cfg.lambda_l1 else zero
                    g_total = g_gan + g_feat + g_vgg + g_l1
                opt_G.zero_grad(set_to_none=True)
                scaler_G.scale(g_total).backward()
                scaler_G.step(opt_G)
                scaler_G.update()

                # D step on the same (detached) fake
                for p in D_raw.parameters():
                    p.requires_grad_(True)
                with autocast:
                    preds = D(torch.cat([torch.cat([x, fake.detach()], 1), torch.cat([x, real], 1)], 0))
                    d_real, d_fake = hinge_d_loss([s[-1][x.shape[0]:] for s in preds],
                                                       [s[-1][: x.shape[0]] for s in preds])
                    d_total = d_real + d_fake
                opt_D.zero_grad(set_to_none=True)
                scaler_D.scale(d_total).backward()
                scaler_D.step(opt_D)
                scaler_D.update()
                lrs = (opt_G.param_groups[0]["lr"], opt_D.param_groups[0]["lr"])
                sched_G.step()
                sched_D.step()

                step += 1
                batch_in_epoch += 1
                vals = torch.stack([g_gan.float(), g_feat.float(), g_vgg.float(), g_l1.float(), g_total.float(),
                                    d_real.float(), d_fake.float()]).detach()
                flag = torch.tensor([1.0 if stop["sig"] is not None else 0.0], device=vals.device)
                if dist.enabled:
                    packed = torch.cat([vals, flag])
                    torch.distributed.all_reduce(packed)
                    vals = packed[:-1] / dist.world_size
                    flag = packed[-1:]
                vals = vals.cpu().tolist()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                ips = cfg.batch_size * dist.world_size / dt
                if step - (resumed_from or 0) > 1:
                    speeds.append(ips)
                last = dict(zip(["G_GAN", "G_feat", "G_VGG", "G_L1", "G_total", "D_real", "D_fake"], vals))
                if csv_writer is not None:
                    csv_writer.writerow({"step": step, "epoch": epoch, "lr_G": repr(lrs[0]), "lr_D": repr(lrs[1]),
                                         **{k: repr(v) for k, v in last.items()}, "img_per_s": f"{ips:.4f}"})
                    csv_file.flush()
                if dist.main and step % cfg.sample_every == 0:
                    lab = x if G_raw.input_kind == "image" else colorize_labels(batch["label"].to(device), label_nc)
                    _save_grid(out / "samples" / f"step_{step:07d}.png", lab, fake, real)
                if batch_in_epoch >= steps_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                    it = None
                progress.update(task, completed=step, info=(
                    f"ep {epoch} G {last['G_total']:.3f} (gan {last['G_GAN']:.3f} feat {last['G_feat']:.3f}"
                    f"{' vgg %.3f' % last['G_VGG'] if vgg_loss is not None else ''}) "
                    f"D {last['D_real'] + last['D_fake']:.3f} | {ips:.2f} img/s"))
                stopping = float(flag[0]) > 0 or (cfg.stop_after is not None
                                                  and step - (resumed_from or 0) >= cfg.stop_after)
                if step % cfg.save_every == 0 or step == total or stopping:
                    save(step)
                    saved_at = step
                if stopping:
                    break
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if csv_file is not None:
            csv_file.close()
        it = None

    interrupted = None
    if step < total and stop["sig"] is None and cfg.stop_after is not None:
        say(f"stopped after {cfg.stop_after} steps as asked (--stop-after), at step {step}/{total}; "
            f"checkpoint saved in {str(out)!r}; continue with --resume")
    elif stop["sig"] is not None or (dist.enabled and step < total):
        if saved_at != step:
            save(step)
        interrupted = signal.Signals(stop["sig"]).name if stop["sig"] is not None else "SIGTERM"
        say(f"stopped by {interrupted} at step {step}/{total}; checkpoint saved in {str(out)!r}; "
            "continue with --resume")
    mean_ips = float(np.mean(speeds)) if speeds else None
    if interrupted is None:
        say(f"done: {step} steps" + (f", {mean_ips:.2f} img/s" if mean_ips else "") + f"; generator in {str(out / GEN_FILE)!r}")
    return TrainResult(out=out, step=step, epoch=epoch, total_steps=total, interrupted=interrupted,
                       images_per_s=mean_ips, last=last, checkpoint=out / GEN_FILE, resumed_from=resumed_from)
