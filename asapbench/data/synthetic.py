"""A synthetic paired set that needs no download: procedural label maps with matching photos.

Label and instance maps are the random Voronoi-like blobs of
:func:`asapbench.inputs.random_label_map` (sample ``i`` uses seed ``seed * 1_000_003 + i``). The
"photo" is a deterministic function of the labels and the pixel position, so a generator can learn
it exactly: a fixed colour per class, a class-specific oriented stripe texture and a vertical
brightness gradient, quantised to 8 bits. With ``cache_dir`` the set is written once as PNGs in
the flat Cityscapes layout (``train_label/``, ``train_inst/`` 16-bit, ``train_img/``) and read back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from asapbench.data.base import PairDataset, files_by_key, match_pairs
from asapbench.data.transforms import Preprocess, photo_to_tensor
from asapbench.inputs import random_label_map

VERSION = 1


def class_appearance(label_nc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colour ``[L, 3]`` uint8-range floats, stripe angle ``[L]``, stripe period ``[L]``) per class."""
    rng = np.random.default_rng(20210601 + label_nc)
    colour = rng.uniform(30, 225, size=(label_nc, 3))
    angle = rng.uniform(0, np.pi, size=label_nc)
    period = rng.uniform(4, 16, size=label_nc)
    return colour, angle, period


def synthetic_sample(index: int, height: int, width: int, label_nc: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Sample ``index`` as numpy arrays: ``label`` uint8/uint16 ``[H, W]``, ``inst`` uint16, ``image`` uint8 ``[H, W, 3]``."""
    labels, inst = random_label_map(1, height, width, label_nc, seed=seed * 1_000_003 + index)
    lab = labels[0, 0].numpy()
    ins = inst[0, 0].numpy()
    colour, angle, period = class_appearance(label_nc)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = (xs * np.cos(angle[lab]) + ys * np.sin(angle[lab])) / period[lab]
    stripes = 25.0 * np.sin(2 * np.pi * phase)
    gradient = 20.0 * (0.5 - ys / max(1, height - 1))
    img = colour[lab] + (stripes + gradient)[..., None]
    return {
        "label": lab.astype(np.uint8 if label_nc <= 256 else np.uint16),
        # class * 1000 + blob; only inequality matters for edges, so beyond 16 bits keep the blob index
        "inst": (ins if ins.max() < 65536 else ins % 1000).astype(np.uint16),
        "image": np.clip(np.rint(img), 0, 255).astype(np.uint8),
    }


class SyntheticDataset(Dataset):
    """In-memory synthetic pairs at the training size (flip augmentation only).

    Items are dicts like :class:`asapbench.data.base.PairDataset`'s.
    """

    def __init__(self, size: int, height: int, width: int, label_nc: int, use_instances: bool,
                 seed: int = 0, flip: bool = True, data_seed: int = 0):
        self.size, self.height, self.width, self.label_nc = size, height, width, label_nc
        self.use_instances = use_instances
        self.seed = seed  # of the augmentation (flips)
        self.data_seed = data_seed  # of the content
        self.flip = flip
        self.name = "synthetic"

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        s = synthetic_sample(index, self.height, self.width, self.label_nc, self.data_seed)
        # the same random draws as PairDataset with Preprocess(mode="none"), so cached == in-memory
        hw = (self.height, self.width)
        p = Preprocess(hw, mode="none", flip=self.flip).params(hw, np.random.default_rng([self.seed, epoch, index]))
        if p["flip"]:
            s = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in s.items()}
        out = {
            "label": torch.from_numpy(s["label"].astype(np.int64)).unsqueeze(0),
            "image": photo_to_tensor(Image.fromarray(s["image"])),
            "index": index,
        }
        if self.use_instances:
            out["inst"] = torch.from_numpy(s["inst"].astype(np.int64)).unsqueeze(0)
        return out


def synthetic_cache(root: str | Path, size: int, height: int, width: int, label_nc: int, seed: int = 0,
                    progress=None) -> Path:
    """Write the synthetic set under ``root`` once (atomically, as a whole folder) and return its folder."""
    root = Path(root)
    meta = {"version": VERSION, "size": size, "height": height, "width": width, "label_nc": label_nc, "seed": seed}
    folder = root / f"synthetic-L{label_nc}-{height}x{width}-N{size}-s{seed}"
    if (folder / "synthetic.json").is_file():
        try:
            if json.loads((folder / "synthetic.json").read_text()) == meta:
                return folder
        except (OSError, ValueError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        for sub in ("train_label", "train_inst", "train_img"):
            (tmp / sub).mkdir()
        for i in range(size):
            s = synthetic_sample(i, height, width, label_nc, seed)
            name = f"synth_{i:06d}"
            Image.fromarray(s["label"]).save(tmp / "train_label" / f"{name}.png")
            Image.fromarray(s["inst"]).save(tmp / "train_inst" / f"{name}.png")
            Image.fromarray(s["image"]).save(tmp / "train_img" / f"{name}.png")
            if progress is not None:
                progress(i + 1, size)
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():  # a stale or broken cache of the same name: replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def cached_synthetic_dataset(folder: Path, label_nc: int, use_instances: bool, seed: int = 0,
                             flip: bool = True) -> PairDataset:
    """The cached synthetic set read back from PNGs (identical tensors to :class:`SyntheticDataset`)."""
    meta = json.loads((folder / "synthetic.json").read_text())
    pairs = match_pairs(
        files_by_key(folder / "train_label", (".png",)),
        files_by_key(folder / "train_img", (".png",)),
        files_by_key(folder / "train_inst", (".png",)),
        f"synthetic cache {str(folder)!r}",
    )
    pre = Preprocess((meta["height"], meta["width"]), mode="none", flip=flip)
    return PairDataset(pairs, pre, label_nc, use_instances=use_instances, seed=seed, name="synthetic")
