"""The trainer: :func:`train` locks and opens the run folder (:func:`_open_run`: resume or fresh run),
builds the run stage by stage (:func:`_train`) and runs the loop; a fresh run that fails before its first
checkpoint removes what it wrote (:func:`_remove_failed_start`)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from asapbench.errors import UserError
from asapbench.training.checkpoints import _LossLog, _StopOnSignal, _sync_generator, check_run_folder
from asapbench.training.config import (
    CSV_FILE,
    GEN_FILE,
    LEGACY_RUN_ID,
    RUN_FILE,
    STATE_FILE,
    TrainConfig,
    auto_save_every,
    resolve_config,
)
from asapbench.training.loop import TrainResult, _finish, _loop
from asapbench.training.setup import (
    _build_data,
    _build_models,
    _build_optim,
    _Dist,
    _pick_device,
    _prepare_run_folder,
    _restore,
    _Run,
    _run_info,
    _sayer,
    _setup_distributed,
    _wrap_for_ddp,
)


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
