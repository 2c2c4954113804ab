"""`asapbench train`: train a generator with the paper's recipe (a thin shell over :func:`asapbench.train.train`).

Runs under ``torchrun --nproc-per-node N -m asapbench train ...`` for data-parallel training.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

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


def _d(text: str, default: str) -> str:
    """``text`` with the default the run gets when the option is left out, as Typer shows defaults.

    The options themselves default to None (on --resume: the saved run's value), so Typer cannot
    show these itself; ``\\[`` keeps rich from reading the brackets as markup.
    """
    return f"{text} \\[default: {default}]"


def train_command(**kwargs):
    """Run training from CLI-style keyword arguments (see :class:`asapbench.train.TrainConfig`)."""
    from asapbench.train import TrainConfig, train

    kwargs = {k: (v.value if isinstance(v, Enum) else v) for k, v in kwargs.items()}
    return train(TrainConfig(**kwargs))


def register(app) -> None:
    """Add the `train` command to the Typer app."""

    @app.command("train", no_args_is_help=True)
    def train_cli(
        model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME", help="Registered generator to train (see `asapbench models --tiny`): asapnet, pix2pixhd, spade, ...; required for a new run.")] = None,
        dataset: Annotated[Optional[DatasetKind], typer.Option("--dataset", metavar="KIND", help="Dataset format: cityscapes, facades, folder or synthetic (README, \"Training data\"); required for a new run.")] = None,
        out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="DIR", help="Run folder for checkpoints, losses.csv and samples, e.g. runs/NAME; required.")] = None,
        data: Annotated[Optional[str], typer.Option("--data", metavar="DIR", help="Dataset folder (synthetic: where the generated set is cached; default: generated in memory).")] = None,
        preset: Annotated[Optional[str], typer.Option("--preset", "-p", metavar="NAME", help="Model preset (default: the model's, or the one --res implies).")] = None,
        res: Annotated[Optional[str], typer.Option("--res", "-r", metavar="HxW", help="Training size in pixels, HxW such as 256x512 (default: the preset's).")] = None,
        epochs: Annotated[Optional[int], typer.Option("--epochs", metavar="N", help=_d("Epochs, the paper's 300 unless --steps is given.", "300"))] = None,
        steps: Annotated[Optional[int], typer.Option("--steps", metavar="N", help="Optimisation steps, instead of --epochs.")] = None,
        batch_size: Annotated[Optional[int], typer.Option("--batch-size", metavar="N", help=_d("Images per step and process.", "1"))] = None,
        amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", metavar="", rich_help_panel="Recipe", help=_d("Mixed precision: fp16 with gradient scaling on CUDA, bf16 on the CPU.", "no-amp"))] = None,
        save_every: Annotated[Optional[int], typer.Option("--save-every", metavar="N", rich_help_panel="Checkpoints and display", help=_d("Checkpoint every N steps (and at the end).", "a tenth of the steps, at most 1000"))] = None,
        sample_every: Annotated[Optional[int], typer.Option("--sample-every", metavar="N", rich_help_panel="Checkpoints and display", help=_d("Sample grid PNG every N steps.", "500"))] = None,
        resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue the run in --out from its last checkpoint; options left out keep the saved run's values.")] = False,
        vgg_weights: Annotated[Optional[str], typer.Option("--vgg-weights", metavar="FILE", help="File of torchvision's vgg19 state dict, for the VGG perceptual loss (default: none, the loss is left out).")] = None,
        label_nc: Annotated[Optional[int], typer.Option("--label-nc", metavar="N", rich_help_panel="Data", help="Number of labels (folder data; overrides a dataset's own).")] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", metavar="N", rich_help_panel="Recipe", help=_d("Random seed of initialisation, data order and augmentation.", "0"))] = None,
        n_scales_d: Annotated[Optional[int], typer.Option("--n-scales-d", metavar="N", rich_help_panel="Recipe", help="Discriminator scales (default: 2, or 3 from 1024 pixels).")] = None,
        lambda_feat: Annotated[Optional[float], typer.Option("--lambda-feat", metavar="X", rich_help_panel="Recipe", help=_d("Feature-matching loss weight.", "10"))] = None,
        lambda_vgg: Annotated[Optional[float], typer.Option("--lambda-vgg", metavar="X", rich_help_panel="Recipe", help=_d("VGG perceptual loss weight (needs --vgg-weights).", "10"))] = None,
        lambda_l1: Annotated[Optional[float], typer.Option("--lambda-l1", metavar="X", rich_help_panel="Recipe", help=_d("Extra L1 reconstruction weight (not in the paper).", "0"))] = None,
        lr_g: Annotated[Optional[float], typer.Option("--lr-g", metavar="X", rich_help_panel="Recipe", help=_d("Generator learning rate.", "0.0001"))] = None,
        lr_d: Annotated[Optional[float], typer.Option("--lr-d", metavar="X", rich_help_panel="Recipe", help=_d("Discriminator learning rate.", "0.0004"))] = None,
        decay_fraction: Annotated[Optional[float], typer.Option("--decay-fraction", metavar="X", rich_help_panel="Recipe", help=_d("Last fraction of the steps over which the learning rates decay linearly to 0.", "1/3"))] = None,
        d_spectral: Annotated[Optional[bool], typer.Option("--d-spectral/--no-d-spectral", metavar="", rich_help_panel="Recipe", help=_d("Spectral norm in the discriminator (the official spectralinstance).", "d-spectral"))] = None,
        ndf: Annotated[Optional[int], typer.Option("--ndf", metavar="N", rich_help_panel="Recipe", help=_d("Discriminator width in channels (the paper's 64).", "64"))] = None,
        preprocess: Annotated[Optional[PreprocessMode], typer.Option("--preprocess", metavar="MODE", rich_help_panel="Data", help=_d("Resize and crop: fixed, resize_and_crop, scale_width_and_crop, crop or none.", "fixed"))] = None,
        load_size: Annotated[Optional[str], typer.Option("--load-size", metavar="HxW", rich_help_panel="Data", help="Size in pixels, HxW, before cropping (resize_and_crop, scale_width_and_crop).")] = None,
        flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", metavar="", rich_help_panel="Data", help=_d("Random horizontal flips.", "flip"))] = None,
        split: Annotated[Optional[str], typer.Option("--split", metavar="NAME", rich_help_panel="Data", help=_d("Dataset split.", "train"))] = None,
        synthetic_size: Annotated[Optional[int], typer.Option("--synthetic-size", metavar="N", rich_help_panel="Data", help=_d("Samples in the synthetic set.", "100"))] = None,
        workers: Annotated[Optional[int], typer.Option("--workers", metavar="N", rich_help_panel="Data", help=_d("Data-loader worker processes (0: load in the training process).", "0"))] = None,
        device: Annotated[Optional[str], typer.Option("--device", "-d", metavar="DEV", help="Device: cpu, cuda or cuda:N (default: cuda if available, else cpu).")] = None,
        stop_after: Annotated[Optional[int], typer.Option("--stop-after", metavar="N", help="Stop with a checkpoint after N steps in this process (time-boxed jobs); continue with --resume.")] = None,
        progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", metavar="", rich_help_panel="Checkpoints and display", help=_d("Progress bar on stderr.", "progress"))] = None,
    ) -> None:
        """Train a generator (GAN: multi-scale PatchGAN, hinge, feature matching, VGG) on a dataset.

        Defaults are the paper's recipe; with --resume, options left out keep the saved run's values.
        """
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
