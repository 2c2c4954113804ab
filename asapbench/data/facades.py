"""CMP Facades (Tylecek & Sara 2013): ``cmp_b0001.png`` label maps (palette PNG, ids 1..12; the
official ASAP-Net setting uses label_nc 13) next to ``cmp_b0001.jpg`` photos, in ``base/`` and
``extended/`` or any folder below ``--data``. Flat ``train_label/`` + ``train_img/`` folders are read too.
"""

from __future__ import annotations

from pathlib import Path

from asapbench.data.base import PHOTO_EXTS, Pair, files_by_key, match_pairs
from asapbench.errors import UserError

LABEL_NC = 13


def facades_pairs(root: str | Path, split: str = "train") -> list[Pair]:
    """The label/photo pairs of a CMP Facades folder; unmatched files raise UserError listing them."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"facades folder {str(root)!r} does not exist; pass the unpacked CMP Facades folder as --data")
    if (root / f"{split}_label").is_dir():
        labels = files_by_key(root / f"{split}_label", (".png",))
        images = files_by_key(root / f"{split}_img", PHOTO_EXTS)
        return match_pairs(labels, images, None, f"facades folder {str(root)!r}")
    labels: dict[str, Path] = {}
    images: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        ext = f.suffix.lower()
        key = str(f.relative_to(root).with_suffix(""))
        if ext == ".png":
            labels[key] = f
        elif ext in (".jpg", ".jpeg"):
            images[key] = f
    return match_pairs(labels, images, None, f"facades folder {str(root)!r} (label .png next to photo .jpg)")
