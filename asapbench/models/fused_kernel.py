"""ASAP-Net's pixelwise stream as one compiled CPU kernel (``pixelwise_impl="fused"``).

The fast formulation runs each layer as a batched product followed by separate passes for the per-tile bias and
the activation; on the CPU those passes and the per-call overheads keep it near 40-60% of the machine's GEMM peak
(results/cpu-profile/). ``_pixelwise_kernel.cpp`` (shipped with the package) runs every tile's MLP on blocks of
pixels through all layers while they are in cache, with the bias in the accumulators and the activation applied
before the store. It is compiled once per machine, on first use, with the C++ compiler found (``$CXX``, ``g++``,
``clang++``) and ``-O3 -march=native``, into ``kernels/`` of the cache folder (:func:`asapbench.fsutil.default_cache_dir`:
``$ASAPBENCH_CACHE`` or ``~/.cache/asapbench``), keyed by the source, the compiler's version and the CPU's flags.

CPU, float32, inference only; a tracer, autograd or another device takes the fast formulation instead
(:meth:`asapbench.models.asapnet.ASAPNetGenerator.pixelwise`). No compiler, or a build that fails, is a
:class:`asapbench.errors.UserError` naming the fix.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from importlib import resources
from pathlib import Path

import torch

from asapbench.cpuinfo import flags_line
from asapbench.errors import UserError
from asapbench.fsutil import atomic_write, default_cache_dir

SOURCE = "_pixelwise_kernel.cpp"
FLAGS = ["-O3", "-march=native", "-pthread", "-fPIC", "-shared", "-std=c++17"]
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None

_FIX = "install a C++ compiler (e.g. apt install g++, or set $CXX) or use pixelwise_impl='fast'"


def compiler() -> str | None:
    """The C++ compiler the kernel is built with: ``$CXX``, else ``g++``, else ``clang++`` (None: none found)."""
    found = (shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++") if name)
    return next((path for path in found if path), None)


def _cpu_flags() -> str:
    """What the compiler's ``-march=native`` sees, for the cache key: the CPU's flags line, else the platform."""
    return flags_line() or platform.processor() or platform.machine()


def library_path(cxx: str) -> Path:
    """Where the kernel built by ``cxx`` for this CPU is (or will be) cached."""
    src = resources.files("asapbench.models").joinpath(SOURCE).read_bytes()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"the C++ compiler {cxx} does not run ({exc}): {_FIX}") from exc
    key = hashlib.sha256(b"\0".join([src, version.encode(), " ".join(FLAGS).encode(), _cpu_flags().encode()]))
    return default_cache_dir() / "kernels" / f"pixelwise-{key.hexdigest()[:16]}.so"


def load() -> ctypes.CDLL:
    """The compiled kernel, built on first use (a few seconds) and cached."""
    global _LIB
    with _LOCK:
        if _LIB is not None:
            return _LIB
        cxx = compiler()
        if cxx is None:
            raise UserError(f"pixelwise_impl='fused' compiles a CPU kernel but no C++ compiler was found: {_FIX}")
        path = library_path(cxx)
        if not path.exists():
            with resources.as_file(resources.files("asapbench.models").joinpath(SOURCE)) as src:

                def build(tmp: str) -> None:
                    proc = subprocess.run([cxx, *FLAGS, "-o", tmp, str(src)], capture_output=True, text=True, timeout=600)
                    if proc.returncode != 0:
                        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                        raise UserError(f"building the fused pixelwise kernel with {cxx} failed ({last}): {_FIX}")

                atomic_write(path, build)  # whole library or none: a concurrent build or a failure leaves nothing half-made
        lib = ctypes.CDLL(str(path))
        lib.asapbench_pixelwise.restype = ctypes.c_int
        lib.asapbench_pixelwise.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 6 + [ctypes.c_void_p] + [ctypes.c_int] * 2 + [ctypes.c_long] * 2
        lib.asapbench_pixelwise_vector_width.restype = ctypes.c_int
        _LIB = lib
        return lib


def usable(hr_in: torch.Tensor, params: torch.Tensor) -> bool:
    """Whether the kernel can run these inputs (CPU float32 tensors); else the fast formulation runs. Only eager
    inference asks: the model sends traced and autograd calls to the graph formulation before this."""
    return (hr_in.device.type == "cpu" and params.device.type == "cpu" and hr_in.dtype == torch.float32
            and params.dtype == torch.float32)


def pixelwise(hr_in: torch.Tensor, params: torch.Tensor, pos_table: torch.Tensor, scale: int, chans: list[int]) -> torch.Tensor:
    """``[N, chans[-1], H, W]``: every tile's MLP (per tile and layer: bias, then ``W[c_in][c_out]``) on ``hr_in``."""
    lib = load()
    n, c, height, width = hr_in.shape
    hr = hr_in if hr_in.stride(3) == 1 and hr_in.stride(2) == width else hr_in.contiguous()  # channel views stay
    p = params.permute(0, 2, 3, 1).contiguous()  # tile-major: [N, h, w, C_total]
    pe = pos_table.to(torch.float32).contiguous()
    out = hr.new_empty(n, chans[-1], height, width)
    arr = (ctypes.c_int * len(chans))(*chans)
    status = lib.asapbench_pixelwise(hr.data_ptr(), p.data_ptr(), pe.data_ptr(), out.data_ptr(), n, c, height, width,
                                     scale, pe.shape[1], arr, len(chans) - 1, torch.get_num_threads(), hr.stride(0), hr.stride(1))
    if status:
        why = "out of memory" if status == 3 else f"sizes it cannot take (MLP widths {chans}, tile {scale})"
        raise UserError(f"the fused pixelwise kernel stopped: {why}; use pixelwise_impl='fast'")
    return out
