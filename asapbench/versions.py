"""Installed packages and their versions, read from distribution metadata (nothing is imported).

One place answers "which version of X is installed" for the environment snapshot, the export and
engine sidecars and the install-conflict checks. A module can come from several distributions
(``onnxruntime`` from ``onnxruntime`` or ``onnxruntime-gpu``; TensorRT from ``tensorrt-cu12`` ...);
:data:`DISTRIBUTIONS` lists them.
"""

from __future__ import annotations

import platform
import re
from importlib import metadata

#: module name -> the distributions that install it, in the order they are tried
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
    # the GPU wheel installs the same module under another distribution name
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-training"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt_cu13", "tensorrt-lean"),
    "tensorrt_rtx": ("tensorrt-rtx-cu12", "tensorrt-rtx-cu13", "tensorrt-rtx", "tensorrt_rtx"),
    "pycuda": ("pycuda",),
    "openvino": ("openvino",),
    "cuda-python": ("cuda-python",),
}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def distribution_version(dist: str) -> str | None:
    """Version of one distribution, None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_version(module: str) -> str | None:
    """Installed version of the library that provides ``module`` (no import); None if absent."""
    for dist in DISTRIBUTIONS.get(module, (module,)):
        v = distribution_version(dist)
        if v is not None:
            return v
    return None


def installed_distributions(pattern: str) -> list[str]:
    """Normalised names (lower case, ``-``) of installed distributions that fully match ``pattern``."""
    rx = re.compile(pattern)
    names = {_norm(d.metadata.get("Name") or "") for d in metadata.distributions()}
    return sorted(n for n in names if rx.fullmatch(n))


def cuda_flavour(prefix: str) -> str | None:
    """``cu12``/``cu13`` from an installed ``<prefix>-cuNN[-libs]`` distribution (e.g. ``tensorrt``)."""
    for name in installed_distributions(rf"{re.escape(_norm(prefix))}-cu\d+(-.*)?"):
        m = re.match(rf"{re.escape(_norm(prefix))}-(cu\d+)", name)
        if m:
            return m.group(1)
    return None


def onnxruntime_conflict() -> str | None:
    """A message when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed (they share one module,
    and whichever was installed last owns its files), else None."""
    if len(installed_distributions(r"onnxruntime(-gpu)?")) < 2:
        return None
    return ("both onnxruntime and onnxruntime-gpu are installed and share the module 'onnxruntime'; fix with: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")


def asapbench_version() -> str:
    v = distribution_version("asapbench")
    if v is None:  # running from a source tree that is not installed
        from asapbench import __version__

        v = __version__
    return v


def export_versions() -> dict[str, str | None]:
    """Versions an ONNX export depends on (None where not installed)."""
    import torch

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu"):
        out[dist] = distribution_version(dist)
    out["asapbench"] = asapbench_version()
    return out
