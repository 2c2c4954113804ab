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

Code: the :mod:`asapbench.training` package, one job per module; this module re-exports its public
names (import them from here). :func:`train` (:mod:`~asapbench.training.trainer`) opens the run
(:func:`_open_run`: resume or fresh) and hands over to :func:`_train`, which builds it stage by stage
(:mod:`~asapbench.training.setup`: :func:`_build_models` with :func:`_build_generator`, the one place
that constructs the generator; :func:`_build_data`; :func:`_build_optim`; :func:`_restore`) and runs
:func:`_loop` (:mod:`~asapbench.training.loop`): one :func:`_train_iteration` per step
(:mod:`~asapbench.training.step`), losses.csv through :class:`_LossLog`, :func:`_save_checkpoint`,
signals through :class:`_StopOnSignal` (:mod:`~asapbench.training.checkpoints`). The configuration
(:class:`TrainConfig`, :func:`resolve_config`) is :mod:`~asapbench.training.config`.
"""

from asapbench.training.checkpoints import check_run_folder, read_losses
from asapbench.training.config import (
    BOUNDED,
    CSV_COLUMNS,
    CSV_FILE,
    DEFAULT_EPOCHS,
    DEFAULTS,
    GEN_FILE,
    LEGACY_RUN_ID,
    LOSS_COLUMNS,
    RESUME_CHANGEABLE,
    RUN_FILE,
    STATE_FILE,
    TrainConfig,
    auto_save_every,
    resolve_config,
)
from asapbench.training.loop import NO_INFO, TrainingDiverged, TrainResult, _progress_bar, _progress_info
from asapbench.training.setup import ResumableSampler, init_weights
from asapbench.training.trainer import train

__all__ = [
    "BOUNDED", "CSV_COLUMNS", "CSV_FILE", "DEFAULTS", "DEFAULT_EPOCHS", "GEN_FILE", "LEGACY_RUN_ID", "LOSS_COLUMNS",
    "NO_INFO", "RESUME_CHANGEABLE", "RUN_FILE", "STATE_FILE", "ResumableSampler", "TrainConfig", "TrainResult",
    "TrainingDiverged", "_progress_bar", "_progress_info", "auto_save_every", "check_run_folder", "init_weights",
    "read_losses", "resolve_config", "train",
]
