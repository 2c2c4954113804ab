"""Backends: torch (eager or compiled), onnxruntime (CPU / CUDA / TensorRT execution providers) and
TensorRT engines, behind one small runner interface.

Each cell goes through two steps:

1. ``prepare(cell)`` -- artefacts outside the measured memory: ONNX export (``exporters.onnx_export``,
   cached and checked against PyTorch), TensorRT engine build (``exporters.trt``, cached);
2. ``open(cell, prepared)`` -- inside the memory probe: load the model into the runtime, put the input
   on the device. The returned :class:`Runner` has ``run()`` (input already on the device, output
   left there: GPU-only time) and ``run_e2e()`` (host float32 tensor in, host array out).

A backend, provider or precision the machine cannot run raises :class:`Unsupported`; the sweep
records it as a row with status ``unsupported``. Nothing ever falls back to the CPU silently: the
onnxruntime providers actually loaded are checked against the one asked for.
onnxruntime and TensorRT are imported inside these functions only.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

#: every backend name ``--backends`` accepts
BACKENDS = ("torch", "torch-compile", "onnxruntime", "onnxruntime-trt", "tensorrt")
PRECISIONS = ("fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class Unsupported(Exception):
    """This backend/provider/precision cannot run on this machine; the message says why."""


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
    progress: Callable[[str], None] | None = None  # short stage descriptions (display)


@dataclass
class Runner:
    """A model loaded into a runtime with its input on the device."""

    run: Callable[[], object]  # device-resident forward (GPU-only time)
    run_e2e: Callable[[], object]  # host tensor -> host array
    provider: str  # what actually executes, e.g. "CUDAExecutionProvider" or "cuda"
    mem: str  # MemoryProbe kind: "cpu", "cuda_torch" or "cuda_device"
    threads: int | None = None
    note: str = ""
    close: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


def ort_providers() -> list[str]:
    """onnxruntime's available execution providers ([] when onnxruntime is not installed)."""
    try:
        from exporters.ort import available_providers

        return list(available_providers())
    except ImportError:
        try:
            import onnxruntime as ort
        except ImportError:
            return []
        return list(ort.get_available_providers())


def _trt_status() -> tuple[bool, str]:
    try:
        from exporters.trt import trt_status
    except ImportError as exc:
        return False, f"exporters.trt is not importable ({exc})"
    return trt_status()


def unsupported_reason(backend: str, device: str, precision: str, cuda_graph: bool = False) -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device`` here (None when it can)."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}"
    if device == "cpu" and precision != "fp32":
        return (f"{precision} is timed on CUDA only (CPU half-precision kernels are not a deployment path "
                "for these models); use --precision fp32 on the CPU")
    if cuda_graph and device != "cuda":
        return "CUDA graphs need --device cuda"
    if backend in ("torch", "torch-compile"):
        return None
    if backend in ("onnxruntime", "onnxruntime-trt"):
        provs = ort_providers()
        if not provs:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        want = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
        if backend == "onnxruntime-trt":
            if device != "cuda":
                return "the TensorRT execution provider needs --device cuda"
            want = "TensorrtExecutionProvider"
            ok, reason = _trt_status()
            if not ok:
                return f"TensorrtExecutionProvider needs the TensorRT libraries: {reason}"
        if want not in provs:
            hint = " (install onnxruntime-gpu in place of onnxruntime)" if device == "cuda" else ""
            return f"onnxruntime has no {want}{hint}; available: {', '.join(provs)}"
        return None
    if backend == "tensorrt":
        if device != "cuda":
            return "TensorRT engines need --device cuda (a CUDA GPU)"
        ok, reason = _trt_status()
        return None if ok else f"TensorRT is not usable: {reason}"
    return f"unknown backend {backend!r}"


def default_backends(device: str) -> list[str]:
    """Every backend that can run on ``device`` here (torch-compile only on request)."""
    return [b for b in ("torch", "onnxruntime", "onnxruntime-trt", "tensorrt") if unsupported_reason(b, device, "fp32") is None]


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------
def _torch_open(cell: Cell) -> Runner:
    dev = torch.device(cell.device)
    dtype = _DTYPES[cell.precision]
    # a private copy, made inside the memory probe, so the weights count and the CPU fp32 model the
    # other backends export stays untouched
    model = copy.deepcopy(cell.model).to(device=dev, dtype=dtype).eval()
    x_dev = cell.x.to(device=dev, dtype=dtype)
    note = ""
    fwd: Callable[[torch.Tensor], torch.Tensor] = model
    if cell.backend == "torch-compile":
        mode = "reduce-overhead" if cell.cuda_graph else None
        fwd = torch.compile(model, mode=mode)
        note = f"torch.compile(mode={mode or 'default'}); compilation happens during warm-up"
    state: dict[str, Any] = {}

    def run() -> None:
        with torch.inference_mode():
            state["out"] = fwd(x_dev)

    if cell.cuda_graph and cell.backend == "torch":
        static_x = x_dev.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = model(static_x)

        def run() -> None:  # noqa: F811 - replay replaces the eager call
            graph.replay()

        def run_e2e() -> object:
            static_x.copy_(cell.x.to(device=dev, dtype=dtype))
            graph.replay()
            return static_out.cpu().numpy()

        note = "CUDA graph replay (captured after 3 eager runs)"
    else:

        def run_e2e() -> object:
            with torch.inference_mode():
                out = fwd(cell.x.to(device=dev, dtype=dtype))
            return out.cpu().numpy()

    def close() -> None:
        state.clear()

    return Runner(
        run=run,
        run_e2e=run_e2e,
        provider=cell.device,
        mem="cuda_torch" if cell.device == "cuda" else "cpu",
        threads=torch.get_num_threads(),
        note=note,
        close=close,
    )


# --------------------------------------------------------------------------------------------
# ONNX export shared by onnxruntime and TensorRT
# --------------------------------------------------------------------------------------------
def _export(cell: Cell):
    from exporters.onnx_export import export_onnx

    out_dir = Path(cell.cache_dir) / "onnx"
    return export_onnx(
        cell.model, cell.height, cell.width, out_dir, cell.precision,
        dynamic=False, batch=cell.batch, check=cell.export_check, seed=cell.seed, reuse=True,
        checkpoint=getattr(cell.model, "checkpoint_path", None), progress=cell.progress,
    )


def _input_dtype(onnx_path: str | os.PathLike, sidecar: dict | None) -> torch.dtype:
    """The dtype the exported graph takes (fp32 for our exports, which keep fp32 inputs)."""
    for key in ("input_dtype", "io_dtype"):
        v = (sidecar or {}).get(key)
        if isinstance(v, str) and "16" in v:
            return torch.float16
    return torch.float32


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------
_ORT_PROVIDER = {("onnxruntime", "cpu"): "cpu", ("onnxruntime", "cuda"): "cuda", ("onnxruntime-trt", "cuda"): "tensorrt"}
_ORT_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _ort_open(cell: Cell, prepared: Any) -> Runner:
    from exporters.ort import OrtRunner, ProviderUnavailable

    provider = _ORT_PROVIDER.get((cell.backend, cell.device))
    if provider is None:
        raise Unsupported(f"{cell.backend} cannot run on {cell.device}")
    try:
        runner = OrtRunner(prepared.onnx_path, provider=provider, threads=cell.threads, cuda_graph=cell.cuda_graph)
    except ProviderUnavailable as exc:
        raise Unsupported(f"onnxruntime did not load {_ORT_EP[provider]}: {exc}") from None
    providers = list(getattr(runner, "providers", []) or [])
    if not providers or providers[0] != _ORT_EP[provider]:
        raise Unsupported(f"onnxruntime asked for {_ORT_EP[provider]} but runs on {providers or 'nothing'}; not timed")
    in_dtype = _input_dtype(prepared.onnx_path, getattr(prepared, "sidecar", None))
    note = ""
    # CPU: the numpy input is kept; CUDA/TensorRT: input and output are torch CUDA tensors bound by IO binding
    runner.bind(cell.x.to(dtype=in_dtype) if cell.device == "cpu" else cell.x.to(device="cuda", dtype=in_dtype))
    if cell.device == "cuda":
        note = "CUDA graph (onnxruntime enable_cuda_graph)" if cell.cuda_graph else ""
    x_np_dtype = cell.x.to(in_dtype).numpy().dtype

    def run() -> None:
        runner.infer_bound()

    def run_e2e() -> object:
        return runner.infer(cell.x.numpy().astype(x_np_dtype, copy=False))

    def close() -> None:
        c = getattr(runner, "close", None)
        if callable(c):
            c()

    return Runner(
        run=run,
        run_e2e=run_e2e,
        provider=providers[0],
        mem="cuda_device" if cell.device == "cuda" else "cpu",
        threads=getattr(runner, "threads", None) or cell.threads,
        note=note,
        close=close,
        info={"providers": providers, "onnx": str(prepared.onnx_path)},
    )


# --------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------
def _trt_prepare(cell: Cell) -> Any:
    from exporters.trt import build_engine

    exported = _export(cell)
    engine = build_engine(exported.onnx_path, out_dir=Path(cell.cache_dir) / "engines", progress=cell.progress)
    return {"onnx": exported, "engine": engine}


def _trt_open(cell: Cell, prepared: Any) -> Runner:
    from exporters.trt import TrtRunner

    engine_path = prepared["engine"].engine_path
    runner = TrtRunner(engine_path)
    runner.bind(cell.x.to(device="cuda", dtype=torch.float32))
    run: Callable[[], object] = runner.infer_bound
    note = ""
    if cell.cuda_graph:
        # one plain enqueue first (TensorRT sets up lazily), then capture the enqueue on torch's capture stream
        runner.infer_bound()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            runner.infer_bound()
        run = graph.replay
        note = "CUDA graph replay of execute_async_v3"

    def run_e2e() -> object:
        return runner.infer(cell.x.numpy())

    def close() -> None:
        c = getattr(runner, "close", None)
        if callable(c):
            c()

    return Runner(run=run, run_e2e=run_e2e, provider="tensorrt", mem="cuda_device", threads=None, note=note,
                  close=close, info={"engine": str(engine_path)})


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------
def prepare(cell: Cell) -> Any:
    """Artefacts the cell needs before it is timed (ONNX export, TensorRT engine); None for torch."""
    reason = unsupported_reason(cell.backend, cell.device, cell.precision, cell.cuda_graph)
    if reason:
        raise Unsupported(reason)
    if cell.backend in ("onnxruntime", "onnxruntime-trt"):
        return _export(cell)
    if cell.backend == "tensorrt":
        return _trt_prepare(cell)
    return None


def open_runner(cell: Cell, prepared: Any) -> Runner:
    """Load the prepared model into its runtime with the input on the device."""
    if cell.backend in ("torch", "torch-compile"):
        return _torch_open(cell)
    if cell.backend in ("onnxruntime", "onnxruntime-trt"):
        return _ort_open(cell, prepared)
    if cell.backend == "tensorrt":
        return _trt_open(cell, prepared)
    raise Unsupported(f"unknown backend {cell.backend!r}")
