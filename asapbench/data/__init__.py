"""Training data: Cityscapes, CMP Facades, generic label/photo folders and a synthetic set.

:func:`describe_dataset` says what a dataset holds (label count, instance maps) before a model is
built; :func:`build_dataset` returns a ``torch.utils.data.Dataset`` whose items are addressed by
``(index, epoch)`` and preprocessed as the official loaders do; :func:`encode_batch` turns a batch
into the generator's input (one-hot labels, optional don't-care channel, instance edges computed
after resizing, or pix2pix's RGB label image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from asapbench.data.transforms import MODES, Preprocess
from asapbench.errors import UserError

DATASETS = ("cityscapes", "facades", "folder", "synthetic")


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset holds: its label count (None: any, taken from the model) and instance maps (None: any)."""

    kind: str
    root: Path | None
    label_nc: int | None
    has_instances: bool | None


def _check_root(kind: str, root: str | Path | None) -> Path:
    if root is None:
        raise UserError(f"--dataset {kind} needs --data DIR (the folder that holds the dataset)")
    p = Path(root)
    if not p.is_dir():
        raise UserError(f"data folder {str(p)!r} does not exist; pass the folder that holds the {kind} dataset as --data")
    return p


def describe_dataset(kind: str, root: str | Path | None, label_nc: int | None = None, split: str = "train") -> DatasetSpec:
    """Label count and instance availability of a dataset (``label_nc`` overrides the dataset's own)."""
    if kind == "cityscapes":
        from asapbench.data.cityscapes import LABEL_NC, cityscapes_has_instances

        p = _check_root(kind, root)
        return DatasetSpec(kind, p, label_nc or LABEL_NC, cityscapes_has_instances(p, split))
    if kind == "facades":
        from asapbench.data.facades import LABEL_NC

        return DatasetSpec(kind, _check_root(kind, root), label_nc or LABEL_NC, False)
    if kind == "folder":
        from asapbench.data.folder import folder_has_instances

        p = _check_root(kind, root)
        return DatasetSpec(kind, p, label_nc, folder_has_instances(p))
    if kind == "synthetic":
        return DatasetSpec(kind, Path(root) if root is not None else None, label_nc, None)
    raise UserError(f"unknown dataset {kind!r}; choose one of: {', '.join(DATASETS)}")


def build_dataset(
    kind: str,
    root: str | Path | None,
    size: tuple[int, int],
    label_nc: int,
    contain_dontcare: bool = False,
    use_instances: bool = False,
    preprocess: str = "fixed",
    load_size: tuple[int, int] | None = None,
    flip: bool = True,
    seed: int = 0,
    split: str = "train",
    synthetic_size: int = 100,
    progress=None,
):
    """The training dataset ``kind`` at the generator's size ``(H, W)`` with its label encoding settings."""
    if preprocess not in MODES:
        raise UserError(f"unknown preprocessing {preprocess!r}; choose one of: {', '.join(MODES)}")
    if kind == "synthetic":
        from asapbench.data.synthetic import SyntheticDataset, cached_synthetic_dataset, synthetic_cache

        if synthetic_size < 1:
            raise UserError("--synthetic-size must be at least 1")
        if root is None:
            return SyntheticDataset(synthetic_size, size[0], size[1], label_nc, use_instances, seed=seed, flip=flip)
        folder = synthetic_cache(root, synthetic_size, size[0], size[1], label_nc, seed=0, progress=progress)
        return cached_synthetic_dataset(folder, label_nc, use_instances, seed=seed, flip=flip)
    from asapbench.data.base import PairDataset

    p = _check_root(kind, root)
    if kind == "cityscapes":
        from asapbench.data.cityscapes import cityscapes_pairs

        pairs = cityscapes_pairs(p, split, instances=use_instances)
    elif kind == "facades":
        from asapbench.data.facades import facades_pairs

        pairs = facades_pairs(p, split)
    elif kind == "folder":
        from asapbench.data.folder import folder_pairs

        pairs = folder_pairs(p, instances=use_instances)
    else:
        raise UserError(f"unknown dataset {kind!r}; choose one of: {', '.join(DATASETS)}")
    pre = Preprocess(size, mode=preprocess, load_size=load_size, flip=flip)
    return PairDataset(pairs, pre, label_nc, contain_dontcare=contain_dontcare, use_instances=use_instances,
                       seed=seed, name=kind)


def encode_batch(batch: dict, model, label_nc: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The generator input of a batch: official one-hot (+ don't-care) (+ instance edge), or pix2pix's RGB label image.

    Edges are computed here, from the instance ids at the generator's resolution.
    """
    from asapbench.inputs import encode_labels, labels_to_image

    labels = batch["label"].to(device) if device is not None else batch["label"]
    if model.input_kind == "image":
        return labels_to_image(labels, label_nc)
    inst = None
    if model.instance_edge:
        inst = batch["inst"].to(device) if device is not None else batch["inst"]
    return encode_labels(labels, model.label_nc, inst, contain_dontcare=model.contain_dontcare)


def colorize_labels(labels: torch.Tensor, label_nc: int) -> torch.Tensor:
    """An integer label map ``[N, 1, H, W]`` as RGB in [-1, 1] (for sample grids)."""
    from asapbench.inputs import labels_to_image

    return labels_to_image(labels.clamp(0, label_nc), label_nc + 1)


__all__ = ["DATASETS", "DatasetSpec", "describe_dataset", "build_dataset", "encode_batch", "colorize_labels", "Preprocess"]
