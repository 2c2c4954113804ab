"""Opening a user's image files safely: the one opener of every label map, instance map and photo
that asapbench reads (training data, ``export --parity-labels``).

A path that is not a regular file (a FIFO, a device, a folder) is refused without blocking on it, an
image with more pixels than Pillow decodes without its decompression-bomb warning
(``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels) is refused before it is decoded, and an
unreadable or damaged file is refused; each with one UserError line naming the file and the fix.
"""

from __future__ import annotations

import os
import re
import stat
from typing import TYPE_CHECKING

from asapbench.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (following symlinks); FIFOs, devices, sockets and folders are not."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_user_image(path: str | os.PathLike, what: str = "image", fix: str = "replace or remove the file",
                    load: bool = True) -> Image.Image:
    """Open the image file ``path`` with Pillow (decoded unless ``load`` is False: then only its header is read).

    ``what`` names the file in errors ("label map", "photo"), ``fix`` says what to do. Raises
    UserError (one line) for a path that is not a regular file, an image above
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, and a file Pillow cannot read.
    """
    import warnings

    from PIL import Image

    p = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fd is checked before anything is read
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UserError(f"cannot open {what} {p!r} ({exc.strerror or exc}); {fix}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{what} {p!r} is {_kind(mode)}, not an image file; {fix}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not print a warning
                img = Image.open(f)
                if load:
                    img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            m = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(m.group(1)) / 1e6:,.0f} megapixels" if m else "too many pixels"
            limit = Image.MAX_IMAGE_PIXELS or 0
            raise UserError(f"{what} {p!r} has {size}, more than the {limit / 1e6:,.0f} megapixels asapbench decodes "
                            f"(Pillow's decompression-bomb limit); resize it, or {fix}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise UserError(f"cannot read {what} {p!r} ({_one_line(exc)}); {fix}") from None
    return img


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    return text[:200]


__all__ = ["open_user_image", "is_regular_file"]
