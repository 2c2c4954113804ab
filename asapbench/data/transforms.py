"""The official preprocessing of label maps, instance maps and photos (pix2pixHD / SPADE loaders).

Each sample draws one set of random parameters (crop offset, flip) that is applied identically to
the label map, the instance map and the photo. Label and instance maps are resized with PIL's
NEAREST filter, photos with BICUBIC; photos become float ``[3, H, W]`` in [-1, 1]
((x / 255 - 0.5) / 0.5). The one-hot encoding and the instance edges are computed *after* this
resizing (:func:`asapbench.data.encode_batch`), i.e. at the resolution the generator receives.

Modes (the official ``preprocess_mode`` names):

- ``fixed``: resize straight to H x W (Cityscapes in SPADE and ASAP-Net: 2048x1024 -> 512x256).
- ``resize_and_crop``: resize to the load size (default 286/256 of H x W), random crop H x W.
- ``scale_width_and_crop``: scale the width to the load width keeping the aspect ratio, random crop.
- ``crop``: random crop H x W at the file's own resolution.
- ``none``: keep the file's resolution (every file must already be H x W).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from asapbench.errors import UserError

MODES = ("fixed", "resize_and_crop", "scale_width_and_crop", "crop", "none")


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open an image file with Pillow through :func:`asapbench.images.open_user_image`: unreadable files,
    non-regular files (a FIFO) and decompression bombs raise UserError naming the file."""
    from asapbench.images import open_user_image

    return open_user_image(path, what, "replace or remove the file")


def as_id_image(img: Image.Image, path: str | Path, what: str) -> Image.Image:
    """An integer-id image (mode L, P, I;16*, I) ready for NEAREST resizing; RGB maps are rejected."""
    if img.mode in ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        return img
    if img.mode == "1":
        return img.convert("L")
    raise UserError(
        f"{what} {str(path)!r} has Pillow mode {img.mode!r}; expected a single-channel map of integer ids "
        "(8-bit L/P or 16-bit I;16 PNG), not a colour-coded image"
    )


def photo_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 ``[3, H, W]`` in [-1, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1).div(255.0).sub(0.5).div(0.5).contiguous()


def ids_to_tensor(img: Image.Image) -> torch.Tensor:
    """Integer-id PIL image -> int64 ``[1, H, W]``."""
    a = np.array(img)
    return torch.from_numpy(a.astype(np.int64)).unsqueeze(0)


@dataclass(frozen=True)
class Preprocess:
    """Resize / crop / flip of one sample to the training size ``size = (H, W)``."""

    size: tuple[int, int]
    mode: str = "fixed"
    load_size: tuple[int, int] | None = None  # resize_and_crop (H, W); scale_width_and_crop uses its W
    flip: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"unknown preprocessing {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.load_size is not None and (self.load_size[0] < self.size[0] or self.load_size[1] < self.size[1]):
            raise UserError(f"--load-size {self.load_size[0]}x{self.load_size[1]} is smaller than the training "
                            f"size {self.size[0]}x{self.size[1]}; pass a load size at least as large")

    def _load_hw(self) -> tuple[int, int]:
        if self.load_size is not None:
            return self.load_size
        h, w = self.size
        return round(h * 286 / 256), round(w * 286 / 256)  # pix2pix/SPADE: load 286, crop 256

    def resized_size(self, src_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of a source image of size ``src_hw`` after the resize step (before cropping)."""
        h, w = self.size
        sh, sw = src_hw
        if self.mode == "fixed":
            return h, w
        if self.mode == "resize_and_crop":
            return self._load_hw()
        if self.mode == "scale_width_and_crop":
            lw = self._load_hw()[1]
            return max(h, round(sh * lw / sw)), lw
        return sh, sw  # crop / none

    def params(self, src_hw: tuple[int, int], rng: np.random.Generator) -> dict:
        """Random parameters of one sample: the resized size, crop offset and flip."""
        rh, rw = self.resized_size(src_hw)
        h, w = self.size
        if self.mode == "none" and (rh, rw) != (h, w):
            raise UserError(f"a {rh}x{rw} file cannot be used at {h}x{w} with --preprocess none; "
                            "use --preprocess fixed (resize) or crop")
        if rh < h or rw < w:
            raise UserError(f"a {rh}x{rw} image is smaller than the {h}x{w} crop; use --preprocess fixed "
                            "or a smaller --res")
        y = int(rng.integers(0, rh - h + 1))
        x = int(rng.integers(0, rw - w + 1))
        flip = bool(self.flip and rng.random() < 0.5)
        return {"resize": (rh, rw), "crop": (y, x), "flip": flip}

    def _geometry(self, img: Image.Image, p: dict, resample) -> Image.Image:
        rh, rw = p["resize"]
        if img.size != (rw, rh):
            img = img.resize((rw, rh), resample)
        y, x = p["crop"]
        h, w = self.size
        if (y, x, h, w) != (0, 0, rh, rw):
            img = img.crop((x, y, x + w, y + h))
        if p["flip"]:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def ids(self, img: Image.Image, p: dict) -> torch.Tensor:
        """A label or instance map: NEAREST resize, crop, flip -> int64 ``[1, H, W]``."""
        return ids_to_tensor(self._geometry(img, p, Image.Resampling.NEAREST))

    def photo(self, img: Image.Image, p: dict) -> torch.Tensor:
        """A photo: BICUBIC resize, crop, flip -> float32 ``[3, H, W]`` in [-1, 1]."""
        return photo_to_tensor(self._geometry(img.convert("RGB"), p, Image.Resampling.BICUBIC))
