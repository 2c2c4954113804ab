"""The training loop: its progress bar, the stop at the first non-finite loss or weights
(:class:`TrainingDiverged`), and how a run ends (:func:`_finish`, a :class:`TrainResult`)."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asapbench.errors import UserError
from asapbench.training.checkpoints import _LossLog, _save_checkpoint, _save_sample, _StopOnSignal
from asapbench.training.config import GEN_FILE, LOSS_COLUMNS
from asapbench.training.setup import _Run
from asapbench.training.step import _mean_over_ranks, _train_iteration


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
