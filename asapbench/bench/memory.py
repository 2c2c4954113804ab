"""Memory a cell will need, estimated before anything proportional to the image is allocated.

The generator runs once on the meta device (shapes only) under a dispatch mode that adds up the
bytes of every tensor an operator creates and subtracts them when the tensor is freed: the peak of
that running sum (plus, at each convolution, a reordered copy of its input and output) is the forward's peak of
live activations (views share storage and are not counted). The estimate of a cell is::

    weights (params + buffers, at the precision) + peak live activations (at the precision, batch)
    + host input and output + a fixed runtime overhead

multiplied by :data:`SAFETY` (allocators round up; onnxruntime keeps an arena). It is compared with
what the device has free: ``MemAvailable`` of /proc/meminfo on the CPU, ``torch.cuda.mem_get_info``
on CUDA. A cell whose estimate does not fit becomes an ``oom`` row without being built.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

#: estimate x SAFETY is what must be available (allocator rounding, runtime arenas, fragmentation). The raw
#: estimate is already at or above the measured peak: SPADE 1024x1024 fp32 estimated 4.0 GiB of activations,
#: measured 3.7 GiB in torch eager and 3.7 GiB in onnxruntime's CPU provider without its memory pattern
#: (2-core AMD EPYC); 1.5 refused SPADE at 2048x2048 on a 24 GB machine where its forward peaks near 15 GB
SAFETY = 1.2
#: runtime libraries' own working memory (kernels' scratch, onnxruntime session), bytes
OVERHEAD = 64 * 2**20
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    activations: int
    io: int

    @property
    def total(self) -> int:
        return int((self.weights + self.activations + self.io + OVERHEAD) * SAFETY)

    def describe(self) -> str:
        return (f"about {gib(self.total)} (weights {gib(self.weights)}, activations {gib(self.activations)}, "
                f"input/output {gib(self.io)}, x{SAFETY:g} margin)")


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else mib(n)


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Running sum of the bytes of tensors created by operators (not views), and its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        if func is torch.ops.aten.convolution.default and isinstance(out, torch.Tensor):
            # CPU kernels (oneDNN) reorder the input and the output into a blocked layout: transient
            # copies of both beside the live tensors
            x = args[0]
            scratch = x.numel() * x.element_size() + out.numel() * out.element_size()
            self.peak = max(self.peak, self.live + scratch)
        return out


def peak_activation_bytes(model: torch.nn.Module, batch: int, height: int, width: int) -> int:
    """Peak bytes of live fp32 activations of one inference forward (meta device: nothing allocated)."""
    from asapbench.counting import _meta_twin

    twin = _meta_twin(model)
    x = torch.empty(batch, twin.input_nc, height, width, device="meta")
    mode = _LiveBytes()
    with torch.no_grad(), mode:
        y = twin(x)
        del y
    return mode.peak


def weight_bytes(model: torch.nn.Module, precision: str = "fp32") -> int:
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return n * BYTES.get(precision, 4)


def estimate(model: torch.nn.Module, batch: int, height: int, width: int, precision: str = "fp32") -> MemoryEstimate:
    """The memory one cell needs (see the module docstring); ``model`` may live on the meta device."""
    scale = BYTES.get(precision, 4) / 4
    act = int(peak_activation_bytes(model, batch, height, width) * scale)
    io = batch * height * width * (getattr(model, "input_nc", 3) + 3) * 4  # host float32 input and output
    return MemoryEstimate(weight_bytes(model, precision), act, io)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for a new cell on ``device``: MemAvailable (CPU), free device memory (CUDA); None if unknown."""
    if device == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info()
            return int(free)
        except Exception:  # noqa: BLE001 - no driver: unknown
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits(est: MemoryEstimate, device: str = "cpu") -> tuple[bool, str]:
    """(fits, reason): the reason names the estimate, what is free and the fix."""
    avail = available_bytes(device)
    if avail is None or est.total <= avail:
        return True, ""
    where = "free GPU memory" if device == "cuda" else "available memory (MemAvailable)"
    return False, (f"needs {est.describe()}, more than the {gib(avail)} {where}; "
                   "choose a smaller --res or --batch (estimate before allocating, see results/README.md)")
