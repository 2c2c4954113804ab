"""The two TensorRT flavours asapbench builds and runs with, and everything that differs between them.

- ``tensorrt`` -- enterprise TensorRT 10.x/11.x (module ``tensorrt``, extra ``asapbench[trt]``): every
  NVIDIA GPU including datacenter Hopper (H100/H200); builds need a GPU and tune for that GPU; a timing
  cache speeds up rebuilds.
- ``rtx`` -- TensorRT for RTX 1.x (module ``tensorrt_rtx``, extra ``asapbench[trt-rtx]``, wheel
  ``tensorrt-rtx-cu12``): RTX-class GPUs only (SM 7.5/8.0/8.6/8.9/12.x; no SM 9.0, so no H100/H200);
  builds ahead of time **without a GPU** for a list of target compute capabilities; kernels are
  compiled just in time on the GPU at first inference and kept in a runtime cache; the timing cache
  is a deprecated no-op (and forces a GPU query), so it is never used.

The builder and runner in :mod:`exporters.trt` are shared; they ask a :class:`Flavour` for the
differences. Nothing here imports either TensorRT module at import time.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from asapbench.errors import UserError

CHOICES = ("auto", "tensorrt", "rtx")


@dataclass(frozen=True)
class Flavour:
    """What differs between enterprise TensorRT and TensorRT for RTX."""

    name: str  #: ``tensorrt`` or ``rtx`` (the ``--trt`` value and the ``flavour`` field of keys and rows)
    module: str  #: the Python module
    label: str  #: human name
    dist: str  #: distribution-name prefix of its wheels (before ``-cu12``/``-cu13``)
    extra: str  #: the asapbench extra that installs it
    majors: tuple[int, ...]  #: supported major versions
    gpu_free_build: bool  #: builds ahead of time without a GPU
    timing_cache: bool  #: a timing cache is worth keeping
    jit_kernels: bool  #: kernels are compiled at first inference (warm up; keep a runtime cache)
    targets: tuple[int, ...] = ()  #: compute capabilities it can build for (SM x 10 + minor); () = the build GPU
    portable: tuple[int, ...] = ()  #: the default target list
    runs_on: str = ""  #: one line for error messages and the README table
    pip: str = ""  #: what to install
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def install_hint(self) -> str:
        return f"pip install 'asapbench[{self.extra}]' ({self.pip})"


TENSORRT = Flavour(
    name="tensorrt",
    module="tensorrt",
    label="TensorRT",
    dist="tensorrt",
    extra="trt",
    majors=(10, 11),
    gpu_free_build=False,
    timing_cache=True,
    jit_kernels=False,
    runs_on="every NVIDIA GPU (incl. H100/H200); builds on the GPU it will run on",
    pip="enterprise TensorRT 10.x/11.x; needs an NVIDIA GPU",
)
RTX = Flavour(
    name="rtx",
    module="tensorrt_rtx",
    label="TensorRT-RTX",
    dist="tensorrt-rtx",
    extra="trt-rtx",
    majors=(1,),
    gpu_free_build=True,
    timing_cache=False,
    jit_kernels=True,
    targets=(75, 80, 86, 89, 120, 121),
    portable=(86, 89, 120),
    runs_on="RTX-class GPUs, SM 7.5/8.0/8.6/8.9/12.x (not H100/H200: no SM 9.0); builds without a GPU",
    pip="tensorrt-rtx-cu12, TensorRT for RTX 1.x",
)
FLAVOURS = {f.name: f for f in (TENSORRT, RTX)}


def sm_label(sm: int) -> str:
    """86 -> '8.6', 120 -> '12.0'."""
    return f"{sm // 10}.{sm % 10}"


# --------------------------------------------------------------------------------------------
# what is installed
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def probe(name: str) -> tuple[Any, str | None, str | None]:
    """(module or None, version or None, why not usable or None) for flavour ``name``."""
    f = FLAVOURS[name]
    try:
        mod = importlib.import_module(f.module)
    except Exception as exc:  # ImportError, or a broken wheel failing to load its libraries
        return None, None, f"the Python package '{f.module}' is not importable ({type(exc).__name__}: {str(exc)[:80]})"
    version = str(getattr(mod, "__version__", "?"))
    bad = version_problem(f, version)
    return (mod if bad is None else None), version, bad


def version_problem(f: Flavour, version: str) -> str | None:
    """Why ``version`` of flavour ``f`` is not supported (None when it is)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return f"{f.label} reports an unreadable version {version!r}"
    if major not in f.majors:
        want = "/".join(f"{m}.x" for m in f.majors)
        return f"{f.label} {version} is not supported (need {want}); {f.install_hint}"
    return None


def cuda_flavour(f: Flavour) -> str | None:
    """``cu12``/``cu13`` from the installed wheel's distribution name (None when not found)."""
    from asapbench.versions import cuda_flavour as from_distribution

    return from_distribution(f.dist)


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's CUDA version (``cuDriverGetVersion``), or None where there is no driver."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        v = ctypes.c_int()
        try:
            if cuda.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
                return f"{v.value // 1000}.{(v.value % 1000) // 10}"
        except Exception:  # pragma: no cover - a broken libcuda
            return None
    return None


def gpu_visible() -> tuple[bool, str]:
    """(a CUDA GPU is usable from torch, why not)."""
    import torch

    if torch.cuda.is_available():
        return True, ""
    if nvidia_driver_version() is None:
        return False, "no NVIDIA driver" + (" (and torch is a CPU-only build)" if torch.version.cuda is None else "")
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    return False, "torch.cuda.is_available() is False"


def current_sm(device_id: int = 0) -> int | None:
    ok, _ = gpu_visible()
    if not ok:
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(device_id)
    return major * 10 + minor


# --------------------------------------------------------------------------------------------
# choosing a flavour
# --------------------------------------------------------------------------------------------
def resolve_flavour(choice: str | None = "auto", for_build: bool = True) -> Flavour:
    """The flavour for ``--trt choice`` (``auto``, ``tensorrt`` or ``rtx``), checked to be installed
    in a supported version; UserError (one line) otherwise.

    ``auto`` takes whichever is installed; with both, enterprise TensorRT where a GPU is visible
    (it runs on every GPU) and TensorRT-RTX otherwise (it builds without one).
    """
    choice = (getattr(choice, "value", choice) or "auto").lower()
    aliases = {"trt": "tensorrt", "enterprise": "tensorrt", "tensorrt-rtx": "rtx", "tensorrt_rtx": "rtx", "trt-rtx": "rtx"}
    choice = aliases.get(choice, choice)
    if choice not in CHOICES:
        raise UserError(f"unknown --trt {choice!r}; choose one of: {', '.join(CHOICES)}")
    if choice != "auto":
        f = FLAVOURS[choice]
        mod, _version, why = probe(f.name)
        if mod is None:
            other = RTX if f is TENSORRT else TENSORRT
            omod, over, _ = probe(other.name)
            alt = f" ({other.label} {over} is installed: use --trt {other.name} or --trt auto)" if omod is not None else ""
            raise UserError(f"--trt {choice}: {why}; install it with {f.install_hint}{alt}")
        return f
    usable = [f for f in (TENSORRT, RTX) if probe(f.name)[0] is not None]
    if not usable:
        why = "; ".join(f"{f.label}: {probe(f.name)[2]}" for f in (TENSORRT, RTX))
        raise UserError(f"no TensorRT is installed ({why}); on an RTX GPU or a machine without a GPU: "
                        f"{RTX.install_hint}; on other NVIDIA GPUs: {TENSORRT.install_hint}")
    if len(usable) == 2:
        return TENSORRT if gpu_visible()[0] else RTX
    return usable[0]


def load(f: Flavour):
    """The imported module of flavour ``f`` (UserError when missing or unsupported)."""
    mod, _version, why = probe(f.name)
    if mod is None:
        raise UserError(f"{f.label} cannot be used: {why}; install it with {f.install_hint}")
    return mod


def describe(f: Flavour) -> str:
    """'TensorRT-RTX 1.7.1.116 (cu12)'."""
    _, version, _ = probe(f.name)
    cu = cuda_flavour(f)
    return f"{f.label} {version or '?'}" + (f" ({cu})" if cu else "")


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def parse_targets(text: str | Sequence[Any] | None) -> list[int] | None:
    """``"86,89,120"`` / ``"8.6, 8.9, 12.0"`` / ``"sm_86"`` -> ``[86, 89, 120]`` (sorted, unique);
    ``"current"`` -> this machine's GPU; None or empty -> None (the flavour's default). UserError on
    anything else."""
    if text is None:
        return None
    items: list[str] = []
    for part in ([text] if isinstance(text, str) else list(text)):
        items += [p.strip() for p in str(part).split(",")]
    items = [p for p in items if p]
    if not items:
        return None
    out = set()
    for p in items:
        if p.lower() == "current":  # this machine's GPU
            sm = current_sm()
            if sm is None:
                raise UserError(f"--target-sm current: no GPU is visible here ({gpu_visible()[1]}); name the targets, e.g. 86,89,120")
            out.add(sm)
            continue
        m = re.fullmatch(r"(?:sm[_-]?)?(\d{1,2})\.(\d)|(?:sm[_-]?)?(\d{2,3})", p.lower())
        if not m:
            raise UserError(f"--target-sm {text if isinstance(text, str) else ','.join(map(str, text))!r} is not a list of "
                            "compute capabilities; write them like 86,89,120 (or 8.6,8.9,12.0)")
        out.add(int(m.group(1)) * 10 + int(m.group(2)) if m.group(1) else int(m.group(3)))
    return sorted(out)


def module_targets(f: Flavour, trt: Any) -> tuple[int, ...]:
    """The targets flavour ``f`` can build for, as this installed module's enum lists them."""
    if not f.targets:
        return ()
    names = getattr(getattr(trt, "ComputeCapability", None), "__members__", {}) or {}
    have = {int(n[2:]) for n in names if re.fullmatch(r"SM\d+", n)}
    return tuple(sorted(have)) if have else f.targets


def resolve_targets(f: Flavour, targets: Sequence[int] | None, trt: Any = None, device_id: int = 0) -> list[int]:
    """The target list a build uses: checked against what ``f`` can build (UserError naming the
    valid choices otherwise). Enterprise TensorRT builds for the GPU it runs on only."""
    if f.gpu_free_build:
        valid = module_targets(f, trt) if trt is not None else f.targets
        if not targets:
            return [t for t in f.portable if t in valid] or list(valid)
        bad = [t for t in targets if t not in valid]
        if bad:
            why = " (Hopper H100/H200 need enterprise TensorRT: --trt tensorrt on that GPU)" if any(90 <= t < 100 for t in bad) else ""
            raise UserError(
                f"--target-sm: {f.label} cannot build for SM {', '.join(sm_label(t) for t in bad)}{why}; "
                f"valid targets: {','.join(map(str, valid))} (default {','.join(map(str, f.portable))})"
            )
        return list(targets)
    sm = current_sm(device_id)
    if sm is None:
        raise UserError(
            f"{f.label} builds only on the GPU it targets and none is visible here ({gpu_visible()[1]}); "
            f"build portable engines without a GPU with --trt rtx ({RTX.install_hint}; targets "
            f"{','.join(map(str, RTX.targets))}), or build on the target machine"
        )
    if targets and list(targets) != [sm]:
        raise UserError(f"--target-sm: {f.label} builds for this machine's GPU only (SM {sm_label(sm)}); "
                        f"pass --target-sm {sm} or leave it out (or use --trt rtx for other RTX targets)")
    return [sm]


def apply_targets(f: Flavour, trt: Any, config: Any, targets: Sequence[int]) -> None:
    """Set the target compute capabilities on a builder config (TensorRT-RTX only)."""
    if not f.gpu_free_build:
        return
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        cc = getattr(trt.ComputeCapability, f"SM{t}", None)
        if cc is None or not config.set_compute_capability(cc, i):
            raise UserError(f"--target-sm: {describe(f)} refused SM {sm_label(t)}; "
                            f"valid targets: {','.join(map(str, module_targets(f, trt)))}")


# --------------------------------------------------------------------------------------------
# runtime: validity diagnostics
# --------------------------------------------------------------------------------------------
_DIAGNOSTICS = {
    "VERSION_MISMATCH": "built by another {label} version",
    "UNSUPPORTED_CC": "not built for this GPU's compute capability",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is too old",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory",
    "MALFORMED_ENGINE": "not a valid engine file (corrupt or truncated)",
    "CUDA_ERROR": "a CUDA error while checking (no NVIDIA driver?)",
}


def validity_problem(f: Flavour, trt: Any, runtime: Any, header: bytes) -> str | None:
    """The runtime's own verdict on an engine header (``IRuntime.get_engine_validity``): None when
    valid (or when this version has no such check), else a short reason."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return None
    try:
        res = check(header)
    except Exception as exc:  # pragma: no cover - depends on the GPU/driver
        return f"the validity check failed ({type(exc).__name__}: {str(exc)[:120]})"
    validity, diag = (res if isinstance(res, tuple) else (res, 0))
    ev = getattr(trt, "EngineValidity", None)
    if ev is None or validity != ev.INVALID:
        return None
    names = getattr(getattr(trt, "EngineInvalidityDiagnostics", None), "__members__", {}) or {}
    reasons = [_DIAGNOSTICS.get(n, n.lower()).format(label=f.label) for n, v in names.items() if int(diag) & int(v)]
    return "; ".join(reasons) or "the runtime says it cannot run here (no NVIDIA driver or GPU?)"
