"""Paired label-map / photo datasets on disk, shared by the Cityscapes, Facades and folder readers.

A dataset item is addressed by ``(index, epoch)`` so that the random preprocessing of every sample
is a pure function of ``(seed, epoch, index)``: the data order and the augmentation of a resumed
run are exactly those of an uninterrupted one, whatever the number of loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from asapbench.data.transforms import Preprocess, as_id_image, open_image
from asapbench.errors import UserError

PHOTO_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    """One training sample on disk: an integer label map, its photo and optionally instance ids."""

    key: str
    label: Path
    image: Path
    inst: Path | None = None


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def match_pairs(
    labels: dict[str, Path],
    images: dict[str, Path],
    insts: dict[str, Path] | None,
    where: str,
) -> list[Pair]:
    """Join label maps, photos and instance maps by key; any unmatched file raises UserError listing them."""
    if not labels:
        raise UserError(f"no label maps found in {where}; check --data and --dataset")
    problems = []
    no_img = sorted(k for k in labels if k not in images)
    no_lab = sorted(k for k in images if k not in labels)
    if no_img:
        problems.append(f"{len(no_img)} label map(s) without a photo: {_listing(no_img)}")
    if no_lab:
        problems.append(f"{len(no_lab)} photo(s) without a label map: {_listing(no_lab)}")
    if insts is not None:
        no_inst = sorted(k for k in labels if k not in insts)
        extra_inst = sorted(k for k in insts if k not in labels)
        if no_inst:
            problems.append(f"{len(no_inst)} label map(s) without an instance map: {_listing(no_inst)}")
        if extra_inst:
            problems.append(f"{len(extra_inst)} instance map(s) without a label map: {_listing(extra_inst)}")
    if problems:
        raise UserError(f"mismatched pairs in {where}: " + "; ".join(problems) + "; add or remove those files")
    return [Pair(k, labels[k], images[k], insts[k] if insts is not None else None) for k in sorted(labels)]


class PairDataset(Dataset):
    """Label map + photo (+ instance ids) pairs, preprocessed as the official loaders do.

    Args:
        pairs: the samples.
        preprocess: resize / crop / flip to the training size.
        label_nc: number of labels the generator one-hot encodes.
        contain_dontcare: map label 255 to the extra don't-care class ``label_nc``.
        use_instances: return the instance ids (the generator has an instance-edge channel).
        seed: seed of the random preprocessing.

    Items are dicts: ``label`` int64 ``[1, H, W]``, ``image`` float32 ``[3, H, W]`` in [-1, 1],
    ``inst`` int64 ``[1, H, W]`` (with ``use_instances``), ``index``.
    """

    def __init__(
        self,
        pairs: list[Pair],
        preprocess: Preprocess,
        label_nc: int,
        contain_dontcare: bool = False,
        use_instances: bool = False,
        seed: int = 0,
        name: str = "dataset",
    ):
        if use_instances and any(p.inst is None for p in pairs):
            raise UserError(f"{name}: the generator needs instance maps but this dataset has none; "
                            "train a model without the instance-edge channel")
        self.pairs = pairs
        self.preprocess = preprocess
        self.label_nc = label_nc
        self.contain_dontcare = contain_dontcare
        self.use_instances = use_instances
        self.seed = seed
        self.name = name

    def __len__(self) -> int:
        return len(self.pairs)

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        """The random generator of one sample's preprocessing in one epoch."""
        return np.random.default_rng([self.seed, epoch, index])

    def check_labels(self, label: torch.Tensor, source: str) -> torch.Tensor:
        """Map 255 to the don't-care class (if any) and reject ids the generator cannot encode."""
        if self.contain_dontcare:
            label = torch.where(label == 255, torch.full_like(label, self.label_nc), label)
        n = self.label_nc + (1 if self.contain_dontcare else 0)
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= n:
            raise UserError(
                f"{source} holds label id {hi if hi >= n else lo}, outside the model's range 0..{n - 1} "
                f"(label_nc={self.label_nc}); pass --label-nc {hi + 1} or use a model/preset with more labels"
            )
        return label

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        pair = self.pairs[index]
        label_img = as_id_image(open_image(pair.label, "label map"), pair.label, "label map")
        photo = open_image(pair.image, "photo")
        imgs = {"label map": (pair.label, label_img), "photo": (pair.image, photo)}
        if self.use_instances:
            imgs["instance map"] = (pair.inst, as_id_image(open_image(pair.inst, "instance map"), pair.inst,
                                                           "instance map"))
        sizes = {what: im.size for what, (_, im) in imgs.items()}
        if len(set(sizes.values())) > 1:
            desc = ", ".join(f"{what} {str(p)!r} {im.size[0]}x{im.size[1]} (WxH)" for what, (p, im) in imgs.items())
            raise UserError(f"sample {pair.key!r}: sizes differ: {desc}; the files of one sample must be aligned")
        w, h = label_img.size
        p = self.preprocess.params((h, w), self.rng(index, epoch))
        out = {
            "label": self.check_labels(self.preprocess.ids(label_img, p), str(pair.label)),
            "image": self.preprocess.photo(photo, p),
            "index": index,
        }
        if self.use_instances:
            out["inst"] = self.preprocess.ids(imgs["instance map"][1], p)
        return out


def files_by_key(folder: Path, suffixes: tuple[str, ...], strip: str = "") -> dict[str, Path]:
    """``{key: path}`` of the files in ``folder`` (recursive) whose name ends with one of ``suffixes``.

    The key is the file name without the suffix and without ``strip`` (e.g. ``_gtFine_labelIds``).
    """
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        name = f.name
        for suf in suffixes:
            if name.lower().endswith(suf.lower()):
                key = name[: len(name) - len(suf)]
                if strip and key.endswith(strip):
                    key = key[: -len(strip)]
                if key in out:
                    raise UserError(f"two files in {str(folder)!r} have the key {key!r}: {out[key].name} and "
                                    f"{f.name}; keep one of them")
                out[key] = f
                break
    return out
