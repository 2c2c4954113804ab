"""`asapbench cache`: what the ONNX/TensorRT cache holds, and clearing it.

`asapbench run` and `asapbench export --engine trt` cache their ONNX exports (``onnx/``),
TensorRT engines (``engines/``) and OpenVINO compiled models (``openvino/``) under ``--cache-dir`` (default ``$ASAPBENCH_CACHE`` or
``~/.cache/asapbench``): a default CPU sweep leaves about 1.4 GB there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from asapbench.errors import UserError


def cache_listing(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every file under the cache folder with its size (bytes), grouped by subfolder, and the total."""
    from asapbench.commands.run import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"--cache-dir {str(root)!r} is a file, not a folder; pass the cache folder")
    files = []
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                files.append({"path": str(p.relative_to(root)), "bytes": p.stat().st_size})
    return {"cache_dir": str(root), "files": files, "total_bytes": sum(f["bytes"] for f in files)}


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Remove the cached exports, engines and compiled models (``onnx/``, ``engines/``, ``openvino/`` and loose files);
    returns the bytes freed. The folder itself stays."""
    listing = cache_listing(cache_dir)
    root = Path(listing["cache_dir"])
    if not root.is_dir():
        return 0
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return listing["total_bytes"]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def register(app: typer.Typer) -> None:
    @app.command("cache")
    def cache_cmd(
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (default $ASAPBENCH_CACHE or ~/.cache/asapbench).")] = None,
        clear: Annotated[bool, typer.Option("--clear", help="Delete every cached ONNX export, TensorRT engine and OpenVINO compiled model (asks first).")] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="With --clear: do not ask.")] = False,
    ) -> None:
        """List the cached ONNX exports and TensorRT engines with their sizes; --clear deletes them."""
        import sys

        listing = cache_listing(cache_dir)
        for f in listing["files"]:
            typer.echo(f"{_mib(f['bytes']):>12}  {f['path']}")
        typer.echo(f"{_mib(listing['total_bytes']):>12}  total, {len(listing['files'])} file(s) in {listing['cache_dir']}")
        if not clear or not listing["files"]:
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("--clear deletes the files above; add --yes to confirm (stdin is not a terminal)")
            if not typer.confirm(f"delete {_mib(listing['total_bytes'])} in {listing['cache_dir']}?"):
                typer.echo("nothing deleted")
                return
        freed = clear_cache(cache_dir)
        typer.echo(f"deleted {_mib(freed)} from {listing['cache_dir']}")
