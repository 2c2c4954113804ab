"""`asapbench train`: train a generator with the paper's recipe (a thin shell over :func:`asapbench.train.train`).

Runs under ``torchrun --nproc-per-node N -m asapbench train ...`` for data-parallel training.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class DatasetKind(str, Enum):
    cityscapes = "cityscapes"
    facades = "facades"
    folder = "folder"
    synthetic = "synthetic"


class PreprocessMode(str, Enum):
    fixed = "fixed"
    resize_and_crop = "resize_and_crop"
    scale_width_and_crop = "scale_width_and_crop"
    crop = "crop"
    none = "none"


def train_command(**kwargs):
    """Run training from CLI-style keyword arguments (see :class:`asapbench.train.TrainConfig`)."""
    from asapbench.train import TrainConfig, train

    kwargs = {k: (v.value if isinstance(v, Enum) else v) for k, v in kwargs.items()}
    return train(TrainConfig(**kwargs))


def register(app) -> None:
    """Add the `train` command to the Typer app."""

    @app.command("train", no_args_is_help=True)
    def train_cli(
        model: Annotated[str | None, typer.Option(help="generator name (see `asapbench models`): asapnet, pix2pixhd, spade, ...")] = None,
        dataset: Annotated[DatasetKind | None, typer.Option(help="dataset format")] = None,
        out: Annotated[str | None, typer.Option(help="run folder (checkpoints, losses.csv, samples), e.g. runs/NAME")] = None,
        data: Annotated[str | None, typer.Option(help="dataset folder (for synthetic: where the generated set is cached)")] = None,
        preset: Annotated[str | None, typer.Option(help="model preset (default: the model's, or the one --res implies)")] = None,
        res: Annotated[str | None, typer.Option(help="training size HxW, e.g. 256x512 (default: the preset's)")] = None,
        epochs: Annotated[int | None, typer.Option(help="epochs (default 300, the paper's)")] = None,
        steps: Annotated[int | None, typer.Option(help="optimisation steps (instead of --epochs)")] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="batch per process [default: 1]")] = None,
        amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="mixed precision (fp16 + grad scaling on CUDA, bf16 on CPU)")] = None,
        save_every: Annotated[int | None, typer.Option(help="checkpoint every N steps [default: 1000]")] = None,
        sample_every: Annotated[int | None, typer.Option(help="sample grid PNG every N steps [default: 500]")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")] = False,
        vgg_weights: Annotated[str | None, typer.Option(help="torchvision vgg19 state-dict file for the perceptual loss")] = None,
        label_nc: Annotated[int | None, typer.Option(help="number of labels (folder data; overrides a dataset's own)")] = None,
        seed: Annotated[int | None, typer.Option(help="random seed [default: 0]")] = None,
        n_scales_d: Annotated[int | None, typer.Option(help="discriminator scales (default: 2, 3 from 1024 px)")] = None,
        lambda_feat: Annotated[float | None, typer.Option(help="feature-matching weight [default: 10]")] = None,
        lambda_vgg: Annotated[float | None, typer.Option(help="VGG perceptual weight [default: 10]")] = None,
        lambda_l1: Annotated[float | None, typer.Option(help="extra L1 reconstruction weight (not in the paper) [default: 0]")] = None,
        lr_g: Annotated[float | None, typer.Option(help="generator lr [default: 1e-4]")] = None,
        lr_d: Annotated[float | None, typer.Option(help="discriminator lr [default: 4e-4]")] = None,
        decay_fraction: Annotated[float | None, typer.Option(help="last fraction of steps with linear lr decay [default: 1/3]")] = None,
        d_spectral: Annotated[bool | None, typer.Option("--d-spectral/--no-d-spectral", help="spectral norm in D (official spectralinstance) [default: on]")] = None,
        ndf: Annotated[int | None, typer.Option(help="discriminator width [default: 64, the paper's]")] = None,
        preprocess: Annotated[PreprocessMode | None, typer.Option(help="resize/crop mode [default: fixed]")] = None,
        load_size: Annotated[str | None, typer.Option(help="HxW before cropping (resize_and_crop, scale_width_and_crop)")] = None,
        flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="random horizontal flips [default: on]")] = None,
        split: Annotated[str | None, typer.Option(help="dataset split [default: train]")] = None,
        synthetic_size: Annotated[int | None, typer.Option(help="samples in the synthetic set [default: 100]")] = None,
        workers: Annotated[int | None, typer.Option(help="data-loader worker processes [default: 0]")] = None,
        device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if available)")] = None,
        stop_after: Annotated[int | None, typer.Option(help="stop with a checkpoint after N steps in this process (time-boxed jobs); continue with --resume")] = None,
        progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="show the progress bar")] = None,
    ) -> None:
        """Train a generator (GAN: multi-scale PatchGAN, hinge, feature matching, VGG) on a dataset."""
        res_ = train_command(
            model=model, dataset=dataset, out=out, data=data, preset=preset, res=res, epochs=epochs, steps=steps,
            batch_size=batch_size, amp=amp, save_every=save_every, sample_every=sample_every, resume=resume,
            vgg_weights=vgg_weights, label_nc=label_nc, seed=seed, n_scales_d=n_scales_d, lambda_feat=lambda_feat,
            lambda_vgg=lambda_vgg, lambda_l1=lambda_l1, lr_g=lr_g, lr_d=lr_d, decay_fraction=decay_fraction,
            d_spectral=d_spectral, ndf=ndf, preprocess=preprocess, load_size=load_size, flip=flip, split=split,
            synthetic_size=synthetic_size, workers=workers, device=device, progress=progress, stop_after=stop_after,
        )
        if res_.interrupted:
            raise typer.Exit(130 if res_.interrupted == "SIGINT" else 143)
