"""A generic folder of label-map / photo pairs: ``label/`` (single-channel id PNGs) and ``image/``
(photos) joined by file stem, optionally ``inst/`` (instance ids, 8- or 16-bit). Accepted folder
names: label|labels|train_label, image|images|img|train_img, inst|instance|instances|train_inst.
The number of labels is given with ``--label-nc``.
"""

from __future__ import annotations

from pathlib import Path

from asapbench.data.base import PHOTO_EXTS, Pair, files_by_key, match_pairs
from asapbench.errors import UserError

LABEL_DIRS = ("label", "labels", "train_label")
IMAGE_DIRS = ("image", "images", "img", "train_img")
INST_DIRS = ("inst", "instance", "instances", "train_inst")


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def folder_has_instances(root: str | Path) -> bool:
    """Whether the folder has an instance-map subfolder."""
    return _find(Path(root), INST_DIRS) is not None


def folder_pairs(root: str | Path, instances: bool = False) -> list[Pair]:
    """The pairs of a generic folder; unmatched files raise UserError listing them."""
    root = Path(root)
    lab, img = _find(root, LABEL_DIRS), _find(root, IMAGE_DIRS)
    if lab is None or img is None:
        raise UserError(
            f"{str(root)!r} needs a label folder ({'|'.join(LABEL_DIRS)}) and a photo folder "
            f"({'|'.join(IMAGE_DIRS)}) whose files share their stems; check --data"
        )
    inst = _find(root, INST_DIRS) if instances else None
    if instances and inst is None:
        raise UserError(f"{str(root)!r} has no instance folder ({'|'.join(INST_DIRS)}) but the model needs instance edges")
    return match_pairs(
        files_by_key(lab, (".png", ".bmp", ".tif", ".tiff")),
        files_by_key(img, PHOTO_EXTS),
        files_by_key(inst, (".png", ".tif", ".tiff")) if inst is not None else None,
        f"folder {str(root)!r}",
    )
