"""Cityscapes: ``*_gtFine_labelIds.png`` (8-bit ids 0..33, label_nc 35), 16-bit
``*_gtFine_instanceIds.png`` (class id * 1000 + instance number for "thing" classes, the class id
otherwise) and ``*_leftImg8bit.png`` photos, 2048x1024.

Two layouts are read:

- the official tree: ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (and
  ``..._instanceIds.png``) with ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``;
- flat folders as in the pix2pixHD repository: ``<split>_label/``, ``<split>_inst/``, ``<split>_img/``.
"""

from __future__ import annotations

from pathlib import Path

from asapbench.data.base import Pair, files_by_key, match_pairs
from asapbench.errors import UserError

LABEL_NC = 35  # the official Cityscapes setting (ids 0..33 occur; 34 channels + 1 unused)
LABEL_SUFFIX = "_gtFine_labelIds.png"
INST_SUFFIX = "_gtFine_instanceIds.png"
PHOTO_SUFFIX = "_leftImg8bit.png"


def cityscapes_dirs(root: Path, split: str = "train") -> tuple[Path, Path, Path]:
    """(label folder, instance folder, photo folder) of a Cityscapes root in either layout."""
    if (root / "gtFine" / split).is_dir() or (root / "leftImg8bit" / split).is_dir():
        gt = root / "gtFine" / split
        return gt, gt, root / "leftImg8bit" / split
    if (root / f"{split}_label").is_dir() or (root / f"{split}_img").is_dir():
        return root / f"{split}_label", root / f"{split}_inst", root / f"{split}_img"
    raise UserError(
        f"{str(root)!r} is not a Cityscapes folder: expected gtFine/{split}/ and leftImg8bit/{split}/ "
        f"(official layout) or {split}_label/, {split}_inst/ and {split}_img/ (flat layout); check --data"
    )


def cityscapes_has_instances(root: Path, split: str = "train") -> bool:
    """Whether the Cityscapes folder holds instance-id maps."""
    _, inst_dir, _ = cityscapes_dirs(root, split)
    return any(inst_dir.rglob(f"*{INST_SUFFIX}")) if inst_dir.is_dir() else False


def cityscapes_pairs(root: str | Path, split: str = "train", instances: bool = True) -> list[Pair]:
    """The samples of a Cityscapes split, joined by ``<city>_<seq>_<frame>``; unmatched files raise UserError."""
    root = Path(root)
    lab_dir, inst_dir, img_dir = cityscapes_dirs(root, split)
    if not img_dir.is_dir():
        raise UserError(f"no photo folder {str(img_dir)!r} for the Cityscapes {split!r} split; "
                        "training needs leftImg8bit photos")
    labels = files_by_key(lab_dir, (LABEL_SUFFIX,))
    images = files_by_key(img_dir, (PHOTO_SUFFIX,))
    insts = files_by_key(inst_dir, (INST_SUFFIX,)) if instances else None
    return match_pairs(labels, images, insts, f"Cityscapes {split!r} split at {str(root)!r}")
