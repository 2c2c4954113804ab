"""The backend table: every way ``asapbench run`` can execute a generator, in one place.

Each :class:`Backend` entry names its runner (``module:Class``), imported only when that backend
is chosen, the devices it runs on, the precisions it times per device and, for onnxruntime, the
execution provider per device. Adding a backend is one entry here plus its runner module.

A runner is used with ``with`` (Polygraphy-style: artefacts apart from execution)::

    runner = make_runner(cell)
    runner.prepare()            # artefacts outside the measured memory: ONNX export, engine build
    with runner:                # open(): load into the runtime, input on the device ... close()
        runner.run()            # device-resident forward (GPU-only time)
        runner.run_e2e()        # host float32 tensor in, host array out

A backend, provider or precision the machine cannot run raises :class:`Unsupported` with the
reason; the sweep records it as a row with status ``unsupported``. Nothing falls back to the CPU
silently: the onnxruntime providers actually loaded are checked against the one asked for.

bf16 is timed on the CPU only, by torch, torch-compile and openvino, and only on a CPU with native bf16
(AVX-512 BF16 or AMX: :func:`asapbench.bench.system.cpu_bf16_support`); its output must pass the
fp16 parity criteria against the fp32 model first (:class:`GateFailed` otherwise: an ``error`` row).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: every precision a backend may time, and the torch dtype of each
PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICES = ("auto", "cpu", "cuda")

_CPU_HALF = ("{precision} is timed on CUDA only (CPU half-precision kernels are not a deployment path for these "
             "models); use --precision fp32 on the CPU (or bf16 with --backends torch on a CPU with AVX-512 BF16 or AMX)")
_CPU_BF16 = "bf16 on the CPU is timed by --backends torch, torch-compile and openvino only; {name} cannot time it"
#: why onnxruntime times no bf16 on the CPU (checked with onnxruntime 1.32 and opset 22, where ONNX allows
#: bfloat16 for these ops; tests/test_bf16_cpu.py re-checks the installed onnxruntime)
_ORT_CPU_BF16 = ("onnxruntime's CPUExecutionProvider has no bfloat16 kernel for Conv, InstanceNormalization or "
                 "MatMul (a bf16 graph fails at session creation: 'Could not find an implementation for "
                 "Conv(22)'), and asapbench has no bf16 ONNX export; time bf16 on the CPU with --backends torch")


class Unsupported(Exception):
    """This backend/provider/precision cannot run on this machine; the message says why."""


class GateFailed(Exception):
    """A reduced-precision cell computes too far from fp32 to be timed; the message carries the numbers."""


@dataclass
class Cell:
    """What one row measures; ``model`` is the CPU fp32 generator ready for inference."""

    model: torch.nn.Module
    x: torch.Tensor  # host input, float32 [N, C, H, W]
    height: int
    width: int
    batch: int
    backend: str
    precision: str
    device: str  # "cpu" or "cuda"
    cuda_graph: bool = False
    threads: int | None = None
    cache_dir: Path = Path(".")
    seed: int = 0
    export_check: bool = True
    trt: str = "auto"  # TensorRT flavour (tensorrt backend)
    progress: Callable[[str], None] | None = None  # short stage descriptions (display)


class Runner:
    """A model in one runtime: ``prepare()``, then ``with runner:`` (``open``/``close``) around
    ``run()`` (device-resident) and ``run_e2e()`` (host to host)."""

    def __init__(self, cell: Cell, backend: Backend) -> None:
        self.cell = cell
        self.backend = backend
        self.provider = ""  # what actually executes, e.g. "CUDAExecutionProvider" or "cpu"
        self.threads: int | None = None
        self.note = ""
        self.info: dict[str, Any] = {}

    @property
    def mem(self) -> str:
        """MemoryProbe kind: "cpu", "cuda_torch" (torch's allocator) or "cuda_device" (free-memory deltas)."""
        return "cpu" if self.cell.device == "cpu" else "cuda_device"

    @classmethod
    def availability(cls, backend: Backend, device: str) -> str | None:
        """Why ``backend`` cannot run on ``device`` here (None when it can); checks installed packages."""
        return None

    def say(self, text: str) -> None:
        if self.cell.progress is not None:
            self.cell.progress(text)

    def prepare(self) -> None:
        """Artefacts the cell needs before it is timed (ONNX export, engine build); nothing for torch."""

    def open(self) -> None:
        raise NotImplementedError

    def run(self) -> object:
        raise NotImplementedError

    def run_e2e(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        """Free the runtime's resources (idempotent)."""

    def __enter__(self) -> Runner:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Backend:
    """One entry of the table: a name, its runner (imported when chosen) and what it can run."""

    name: str
    runner: str  # "module:Class"
    devices: tuple[str, ...]
    precisions: Mapping[str, tuple[str, ...]]  # device -> precisions it times there
    providers: Mapping[str, str] = field(default_factory=dict)  # device -> onnxruntime execution provider
    device_hint: str = ""  # why the other devices cannot run it
    in_default: bool = True  # part of the default set wherever it is available
    description: str = ""
    #: (device, precision) -> why this backend cannot time that precision there (a specific reason)
    refusals: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def runner_class(self) -> type[Runner]:
        module, cls = self.runner.split(":")
        return getattr(importlib.import_module(module), cls)

    def unsupported_reason(self, device: str, precision: str, cuda_graph: bool = False) -> str | None:
        """Why this backend cannot time ``precision`` on ``device`` here (None when it can)."""
        if precision not in PRECISIONS:
            return f"unknown precision {precision!r}"
        if (device, precision) in self.refusals:
            return self.refusals[(device, precision)]
        if device == "cpu" and precision not in self.precisions.get("cpu", ("fp32",)):
            if precision == "bf16":
                return _CPU_BF16.format(name=self.name)
            return _CPU_HALF.format(precision=precision)
        if cuda_graph and device != "cuda":
            return "CUDA graphs need --device cuda"
        if device not in self.devices:
            return self.device_hint or f"{self.name} cannot run on {device}"
        if precision not in self.precisions.get(device, ()):
            return f"{self.name} does not time {precision} on {device}; choose from {', '.join(self.precisions[device])}"
        if device == "cpu" and precision == "bf16":
            from asapbench.bench import system

            ok, why = system.cpu_bf16_support()
            if not ok:
                return why
        return self.runner_class().availability(self, device)


_BOTH = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}
_CUDA = {"cuda": ("fp32", "fp16")}
#: torch: bf16 on the CPU as well (on CPUs with AVX-512 BF16 or AMX: system.cpu_bf16_support)
_TORCH = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16")}
_OPENVINO = {"cpu": ("fp32", "bf16")}

#: the backend table, in the order rows are written
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", "asapbench.bench.runner_torch:TorchRunner", ("cpu", "cuda"), _TORCH,
            description="PyTorch eager"),
    Backend("torch-compile", "asapbench.bench.runner_torch:TorchRunner", ("cpu", "cuda"), _TORCH, in_default=False,
            description="torch.compile (Inductor); compilation happens during warm-up"),
    Backend("onnxruntime", "asapbench.bench.runner_ort:OnnxRuntimeRunner", ("cpu", "cuda"), _BOTH,
            providers={"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"},
            refusals={("cpu", "bf16"): _ORT_CPU_BF16},
            description="onnxruntime on the parity-gated ONNX export"),
    Backend("onnxruntime-trt", "asapbench.bench.runner_ort:OnnxRuntimeRunner", ("cuda",), _CUDA,
            providers={"cuda": "TensorrtExecutionProvider"},
            device_hint="the TensorRT execution provider needs --device cuda",
            description="onnxruntime's TensorRT execution provider"),
    Backend("tensorrt", "asapbench.bench.runner_trt:TensorRTRunner", ("cuda",), _CUDA,
            device_hint="TensorRT engines need --device cuda (a CUDA GPU)",
            description="TensorRT engine built from the ONNX export"),
    Backend("openvino", "asapbench.bench.runner_openvino:OpenVINORunner", ("cpu",), _OPENVINO, in_default=False,
            device_hint="OpenVINO is timed on the CPU only (--device cpu)",
            description="OpenVINO (CPU) on the parity-gated ONNX export, precision pinned (INFERENCE_PRECISION_HINT)"),
)}


def get_backend(name: str) -> Backend:
    from asapbench.errors import UserError

    try:
        return BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}") from None


def unsupported_reason(backend: str, device: str, precision: str, cuda_graph: bool = False) -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device`` here (None when it can)."""
    b = BACKENDS.get(backend)
    if b is None:
        return f"unknown backend {backend!r}"
    return b.unsupported_reason(device, precision, cuda_graph)


def default_backends(device: str) -> list[str]:
    """Every default backend that can run fp32 on ``device`` here (torch-compile only on request)."""
    return [n for n, b in BACKENDS.items() if b.in_default and b.unsupported_reason(device, "fp32") is None]


def make_runner(cell: Cell) -> Runner:
    """The runner of ``cell.backend``, after checking that it can run here (:class:`Unsupported` if not)."""
    reason = unsupported_reason(cell.backend, cell.device, cell.precision, cell.cuda_graph)
    if reason:
        raise Unsupported(reason)
    b = BACKENDS[cell.backend]
    return b.runner_class()(cell, b)
