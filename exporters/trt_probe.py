"""TensorRT availability and build environment: which flavour imports, whether it can build or run here,
the environment an engine depends on, and where the timing cache goes (see :mod:`exporters.trt`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asapbench.errors import UserError
from exporters import trt_flavours as F
from exporters.trt_flavours import Flavour, resolve_flavour

INSTALL_HINT = "pip install 'asapbench[trt]' on a machine with an NVIDIA GPU"
RTX_INSTALL_HINT = "pip install 'asapbench[trt-rtx]' (TensorRT for RTX: builds without a GPU, runs on RTX GPUs)"
MIN_TRT_MAJOR = 10


def trt_status(flavour: str = "auto") -> tuple[bool, str]:
    """(usable, reason): a TensorRT flavour imports in a supported version AND an NVIDIA GPU is
    visible, i.e. engines can be *run* here. (Building TensorRT-RTX engines needs no GPU:
    :func:`build_status`.)"""
    try:
        f = resolve_flavour(flavour)
    except UserError as exc:
        _, _ver, why = F.probe("tensorrt")
        if flavour in ("auto", "tensorrt", None) and why and "not importable" in why:
            # keep the enterprise wording: the package and the GPU, and both fixes
            gpu, gwhy = F.gpu_visible()
            missing = [f"the Python package 'tensorrt' is not importable ({why.split('(', 1)[-1].rstrip(')')})"]
            if not gpu:
                missing.append(f"no CUDA GPU is visible ({gwhy})")
            return False, (f"TensorRT cannot run here: {' and '.join(missing)}; install with {INSTALL_HINT}, "
                           f"or on an RTX GPU {RTX_INSTALL_HINT}")
        return False, str(exc)
    gpu, gwhy = F.gpu_visible()
    label = F.describe(f)
    if not gpu:
        build = " (engines can still be built here: `asapbench export --engine trt`)" if f.gpu_free_build else ""
        return False, (f"{label} cannot run engines here: no CUDA GPU is visible ({gwhy}){build}; "
                       f"run them on a machine with an NVIDIA GPU ({f.runs_on}); {INSTALL_HINT}")
    import torch

    name = torch.cuda.get_device_name(0)
    sm = F.current_sm(0)
    if f.targets and sm not in f.targets:
        return False, (f"{label} cannot run on {name} (SM {F.sm_label(sm)}; it supports "
                       f"{', '.join(F.sm_label(t) for t in f.targets)}): use enterprise TensorRT, {INSTALL_HINT}")
    return True, f"{label} on {name}"


def build_status(flavour: str = "auto") -> tuple[bool, str]:
    """(can build engines here, reason)."""
    try:
        f = resolve_flavour(flavour)
    except UserError as exc:
        return False, str(exc)
    if not f.gpu_free_build:
        gpu, gwhy = F.gpu_visible()
        if not gpu:
            return False, (f"{F.describe(f)} builds only on a GPU and none is visible ({gwhy}); "
                           f"build portable engines without a GPU with --trt rtx ({RTX_INSTALL_HINT})")
    return True, f"{F.describe(f)} can build here"


def require_trt(flavour: str = "auto"):
    """Import the TensorRT flavour for *running* or raise UserError naming what is missing and the fix."""
    ok, reason = trt_status(flavour)
    if not ok:
        raise UserError(reason)
    return F.load(resolve_flavour(flavour))


def engine_environment(device_id: int = 0, flavour: str | Flavour = "auto",
                       targets: Sequence[int] | None = None) -> dict[str, Any]:
    """What an engine depends on besides its ONNX and options.

    Enterprise TensorRT: TensorRT, CUDA and the GPU (needs one). TensorRT-RTX: the version, the CUDA
    flavour and the target list (no GPU needed; the build machine's GPU, if any, is informational).
    """
    f = flavour if isinstance(flavour, Flavour) else resolve_flavour(flavour)
    trt = F.load(f)
    gpu, _ = F.gpu_visible()
    if f.gpu_free_build:
        import torch

        sm = F.current_sm(device_id)
        return {
            "flavour": f.name,
            "tensorrt": trt.__version__,
            "tensorrt_cuda": F.cuda_flavour(f),
            "targets": list(F.resolve_targets(f, targets, trt)),
            "cuda_driver": F.nvidia_driver_version(),
            "build_gpu": torch.cuda.get_device_name(device_id) if gpu else None,
            "sm": sm,
        }
    ok, reason = build_status(f.name)
    if not ok:
        raise UserError(reason)
    import torch

    tl = F.resolve_targets(f, targets, trt, device_id)
    cc = torch.cuda.get_device_capability(device_id)
    return {
        "flavour": f.name,
        "tensorrt": trt.__version__,
        "tensorrt_cuda": F.cuda_flavour(f),
        "cuda_runtime": torch.version.cuda,
        "cuda_driver": F.nvidia_driver_version(),
        "gpu_name": torch.cuda.get_device_name(device_id),
        "compute_capability": f"{cc[0]}.{cc[1]}",
        "targets": tl,
        "sm": tl[0],
    }


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(s)).strip("-")


def timing_cache_path(out_dir: str | Path, env: Mapping[str, Any]) -> Path:
    """One timing cache per TensorRT version, GPU and compute capability (a cache is tied to all three)."""
    return Path(out_dir) / f"timing-trt{_slug(env['tensorrt'])}-{_slug(env['gpu_name'])}-sm{_slug(env['compute_capability'])}.cache"


_LOGGERS: dict[str, Any] = {}


def _make_logger(trt):
    """The process-wide logger of this TensorRT module (TensorRT wants one logger for all builders and
    runtimes). It keeps the error messages and the builder's layer information since the last call."""
    key = trt.__name__
    if key not in _LOGGERS:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.layer_info: list[str] = []

            def log(self, severity, msg):
                msg = str(msg)
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif msg.startswith(("Layers:", "Engine Layer Information")):
                    self.layer_info.append(msg)

        _LOGGERS[key] = _Logger()
    lg = _LOGGERS[key]
    lg.errors.clear()
    lg.layer_info.clear()
    return lg
