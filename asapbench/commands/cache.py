"""`asapbench cache`: what the ONNX/TensorRT cache holds, and clearing it.

`asapbench run` and `asapbench export --engine trt` cache their ONNX exports (``onnx/``) and
TensorRT engines (``engines/``) and OpenVINO compiled models (``openvino/``) under ``--cache-dir`` (default ``$ASAPBENCH_CACHE`` or
``~/.cache/asapbench``; there too, in ``kernels/``, the fused pixelwise kernel that ``--pixelwise fused`` builds): a default CPU sweep leaves about 1.4 GB there. A cache folder holds the marker
``.asapbench-cache``; ``--clear`` deletes only the files asapbench wrote (by sub-folder and name
pattern), takes the cache's lock so that no run is writing, and refuses a folder without the marker
that holds anything else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from asapbench.errors import UserError


def cache_listing(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """asapbench's files under the cache folder with their sizes (bytes), the total, whether the folder
    is marked as a cache, and the other files (``foreign``: never deleted)."""
    from asapbench.fsutil import default_cache_dir
    from exporters.cache import has_marker, scan_cache

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"--cache-dir {str(root)!r} is a file, not a folder; pass the cache folder")
    own, other = scan_cache(root) if root.is_dir() else ([], [])
    files = [{"path": p, "bytes": n} for p, n in own]
    return {"cache_dir": str(root), "files": files, "total_bytes": sum(n for _, n in own),
            "marked": root.is_dir() and has_marker(root), "foreign": [p for p, _ in other]}


def _refuse_foreign(listing: dict[str, Any]) -> None:
    """UserError when the folder is not marked as a cache and holds files asapbench did not write."""
    if listing["foreign"] and not listing["marked"]:
        n, first = len(listing["foreign"]), listing["foreign"][0]
        raise UserError(
            f"--cache-dir {listing['cache_dir']!r} is not an asapbench cache (no .asapbench-cache marker) and holds "
            f"{n} item(s) asapbench did not write (e.g. {first!r}); nothing deleted: pass the cache folder to --cache-dir"
        )


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete the files asapbench wrote in the cache (exports, engines, OpenVINO compiled models, sidecars, timing and runtime caches,
    temporary files) and its emptied sub-folders; returns the bytes freed. Other files stay.

    Holds the cache's exclusive lock while it deletes: UserError naming the holder when a run or export is
    using the cache. A folder without the marker is refused (UserError) when it holds anything asapbench
    did not write; one holding only asapbench's files is adopted (marked). The folder itself stays.
    """
    from exporters.cache import SUBFOLDERS, CacheBusy, CacheLock, write_marker

    listing = cache_listing(cache_dir)
    root = Path(listing["cache_dir"])
    if not root.is_dir():
        return 0
    try:
        lock = CacheLock(root, exclusive=True).acquire(blocking=False)
    except CacheBusy as exc:
        raise UserError(f"--cache-dir {str(root)!r} is in use by another asapbench process ({exc}); nothing deleted: "
                        "wait for it to finish, then clear again") from None
    except OSError as exc:
        raise UserError(f"cannot lock --cache-dir {str(root)!r} ({exc.strerror or exc}); nothing deleted") from None
    try:
        listing = cache_listing(root)  # again, under the lock
        _refuse_foreign(listing)
        if not listing["marked"] and listing["files"]:
            write_marker(root)  # only asapbench's files: adopted
        freed = 0
        for f in listing["files"]:
            p = root / f["path"]
            try:
                p.unlink()
                freed += f["bytes"]
            except FileNotFoundError:
                pass
        emptied = sorted({str(Path(f["path"]).parent) for f in listing["files"] if f["path"].startswith("openvino/")})
        for sub in (*emptied, "engines/runtime-cache", *SUBFOLDERS):
            try:
                (root / sub).rmdir()  # only when empty
            except OSError:
                pass
    finally:
        lock.release()
    return freed


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def register(app: typer.Typer) -> None:
    @app.command("cache")
    def cache_cmd(
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", metavar="DIR", help="Cache folder (default $ASAPBENCH_CACHE or ~/.cache/asapbench).")] = None,
        clear: Annotated[bool, typer.Option("--clear", metavar="", help="Delete the ONNX exports, TensorRT engines, OpenVINO compiled models and other files asapbench wrote in the cache (asks first); other files stay. Refused while a run uses the cache, and for a folder without the .asapbench-cache marker that holds other files.")] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", metavar="", help="With --clear: do not ask.")] = False,
    ) -> None:
        """List the cached ONNX exports and TensorRT engines with their sizes; --clear deletes them."""
        import sys

        listing = cache_listing(cache_dir)
        for f in listing["files"]:
            typer.echo(f"{_mib(f['bytes']):>12}  {f['path']}")
        typer.echo(f"{_mib(listing['total_bytes']):>12}  total, {len(listing['files'])} file(s) in {listing['cache_dir']}")
        if listing["foreign"]:
            typer.echo(f"{len(listing['foreign'])} other item(s) there were not written by asapbench: never deleted")
        if clear:
            _refuse_foreign(listing)
        if not clear or not listing["files"]:
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("--clear deletes the files above; add --yes to confirm (stdin is not a terminal)")
            if not typer.confirm(f"delete {_mib(listing['total_bytes'])} in {listing['cache_dir']}?"):
                typer.echo("nothing deleted")
                return
        freed = clear_cache(listing["cache_dir"])
        typer.echo(f"deleted {_mib(freed)} from {listing['cache_dir']}")
