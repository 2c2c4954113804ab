"""onnxruntime runner for exported generators: CPU, CUDA or TensorRT execution provider.

``OrtRunner(path, provider="cuda")`` never measures silently on the CPU: when the requested
execution provider is not in ``session.get_providers()`` after the session is created (onnxruntime
falls back quietly when a provider's libraries fail to load) it raises :class:`ProviderUnavailable`.

Two ways to run, for the timing harness:

- ``infer(x)``: host numpy in, host numpy out (end-to-end: includes the copies);
- ``bind(x)`` once, then ``infer_bound()`` repeatedly: with CUDA/TensorRT the input and output are
  torch CUDA tensors bound with IO binding (GPU-only time); on the CPU the numpy input is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asapbench.errors import UserError, require

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


#: onnxruntime input type -> numpy dtype (inputs of our exports: float, or the int label map)
_ORT_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
                    "tensor(int64)": np.int64}


class ProviderUnavailable(UserError):
    """The requested onnxruntime execution provider cannot be used on this machine."""


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (e.g. ``['CPUExecutionProvider']``)."""
    ort = require("onnxruntime", why="to run ONNX models")
    return list(ort.get_available_providers())


def install_conflict() -> str | None:
    """Both onnxruntime wheels installed side by side (:func:`asapbench.versions.onnxruntime_conflict`)."""
    from asapbench.versions import onnxruntime_conflict

    return onnxruntime_conflict()


def _install_hint(provider: str) -> str:
    conflict = install_conflict()
    if conflict and provider != "cpu":
        return conflict
    if provider == "cpu":
        return "reinstall onnxruntime"
    extra = "the TensorRT libraries (pip install 'asapbench[trt]') and " if provider == "tensorrt" else ""
    return (
        f"install {extra}onnxruntime-gpu on a machine with an NVIDIA GPU "
        "(pip uninstall onnxruntime && pip install 'asapbench[gpu]'), or use --provider cpu"
    )


#: ``optimize`` of :func:`make_session` -> onnxruntime's graph optimization level
_OPT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "none": "ORT_DISABLE_ALL"}


def make_session(model: Any, provider: str = "cpu", *, device_id: int = 0, threads: int | None = None,
                 cuda_graph: bool = False, arena: bool = True, optimize: str = "all",
                 profile_prefix: str | None = None):
    """The one onnxruntime session factory: ``asapbench run``'s settings unless a parameter says otherwise.

    ``model``: an ONNX path, a ModelProto or its bytes. Run's settings: warnings off (log level 3),
    ``threads`` intra-op threads (None: onnxruntime's default), every graph optimization, and on the CPU no
    memory pattern (it plans a second, whole-graph block after the first run while the arena keeps the first
    run's buffers: SPADE at 1024x1024 peaks at 9.1 GB with it and 4.9 GB without, at the same speed within
    noise; docs/timing.md, "Memory"). The GPU providers fall back to the next in the list (CUDA, then CPU);
    :class:`OrtRunner` checks that the one asked for loaded.

    What must differ is a parameter: ``arena=False`` returns each run's activations to the system (the parity
    gate and node-by-node evaluation, so that two sessions and a PyTorch forward never hold their peaks at
    once); ``optimize`` ``"extended"`` or ``"none"`` (a single node has nothing to fuse; an fp16 emulation
    keeps every Cast); ``profile_prefix`` turns onnxruntime's profiler on (``asapbench profile``).
    """
    ort = require("onnxruntime", why="to run ONNX models")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if provider == "cpu":
        opts.enable_mem_pattern = False
    if not arena:
        opts.enable_cpu_mem_arena = False
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimize])
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    cuda_opts: dict[str, Any] = {"device_id": device_id}
    if cuda_graph:
        cuda_opts["enable_cuda_graph"] = "1"
    if provider == "cpu":
        providers: list[Any] = ["CPUExecutionProvider"]
    elif provider == "cuda":
        providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
    else:
        # no engine cache: it is keyed on the graph topology only (onnxruntime#6455)
        providers = [("TensorrtExecutionProvider", {"device_id": device_id}), ("CUDAExecutionProvider", cuda_opts),
                     "CPUExecutionProvider"]
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, opts, providers=providers)


class OrtRunner:
    """An onnxruntime session on one execution provider, with plain and IO-bound inference.

    Args:
        onnx_path: an exported ``.onnx`` file.
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        device_id: CUDA device for the GPU providers.
        threads: intra-op threads (None: onnxruntime's default).
        cuda_graph: capture a CUDA graph (CUDA provider; needs ``bind`` + ``infer_bound`` with fixed shapes).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        provider: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        cuda_graph: bool = False,
    ):
        ort = require("onnxruntime", why="to run ONNX models")
        if provider not in PROVIDERS:
            raise UserError(f"unknown onnxruntime provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
        path = Path(onnx_path)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {str(path)!r}; export it first with `asapbench export`")
        ep = PROVIDERS[provider]
        have = ort.get_available_providers()
        if ep not in have:
            raise ProviderUnavailable(
                f"onnxruntime {ort.__version__} has no {ep} (available: {', '.join(have)}); {_install_hint(provider)}"
            )
        self.provider = provider
        self.device_id = device_id
        self.path = path
        self.threads = threads
        try:
            self.session = make_session(path, provider, device_id=device_id, threads=threads, cuda_graph=cuda_graph)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if "INVALID_PROTOBUF" in str(exc) or "Load model" in str(exc) or "protobuf" in str(exc).lower():
                raise UserError(
                    f"{str(path)!r} is not a valid ONNX model ({first}); delete it and export again with `asapbench export`"
                ) from None
            raise ProviderUnavailable(f"onnxruntime could not create a {ep} session for {path.name}: {first}") from None
        self.providers: list[str] = list(self.session.get_providers())
        if ep not in self.providers:
            raise ProviderUnavailable(
                f"onnxruntime fell back to {', '.join(self.providers)} instead of {ep} (its libraries did not load); "
                f"{_install_hint(provider)}"
            )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._input_meta = self.session.get_inputs()[0]
        #: numpy dtype the graph's input takes: float32, or int32/int64 for a label-map input (--input labels)
        self.input_dtype = _ORT_INPUT_TYPES.get(self._input_meta.type, np.float32)
        self._output_meta = self.session.get_outputs()[0]
        self._binding = None
        self._x_host: np.ndarray | None = None
        self._x_dev = None
        self.output: Any = None

    @property
    def on_gpu(self) -> bool:
        return self.provider in ("cuda", "tensorrt")

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Host array in, host array out (copies included)."""
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})[0]

    def _output_shape(self, in_shape: tuple[int, ...]) -> list[int]:
        """Concrete output shape: static dims as declared, symbolic dims from the input's same axis."""
        in_dims = list(self._input_meta.shape)
        shape = []
        for i, d in enumerate(self._output_meta.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif isinstance(d, str) and d in in_dims:
                shape.append(int(in_shape[in_dims.index(d)]))
            else:
                shape.append(int(in_shape[i]))
        return shape

    def bind(self, x) -> None:
        """Fix the input for :meth:`infer_bound`.

        GPU providers: ``x`` is a torch tensor (moved to ``cuda:device_id`` if needed); input and a
        preallocated torch output are bound by device pointer. CPU: ``x`` (torch or numpy) is kept
        as a numpy array.
        """
        if not self.on_gpu:
            arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            self._x_host = np.ascontiguousarray(arr, dtype=self.input_dtype)
            return
        import torch

        dev = torch.device("cuda", self.device_id)
        x = x.to(device=dev, dtype=getattr(torch, np.dtype(self.input_dtype).name)).contiguous()
        out = torch.empty(self._output_shape(tuple(x.shape)), dtype=torch.float32, device=dev)
        io = self.session.io_binding()
        io.bind_input(self.input_name, "cuda", self.device_id, self.input_dtype, list(x.shape), x.data_ptr())
        io.bind_output(self.output_name, "cuda", self.device_id, np.float32, list(out.shape), out.data_ptr())
        self._x_dev, self.output, self._binding = x, out, io

    def infer_bound(self) -> None:
        """Run on the bound input; the result is in :attr:`output` (torch CUDA tensor or numpy)."""
        if self.on_gpu:
            if self._binding is None:
                raise RuntimeError("call bind(x) before infer_bound()")
            self._binding.synchronize_inputs()
            self.session.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
            return
        if self._x_host is None:
            raise RuntimeError("call bind(x) before infer_bound()")
        self.output = self.session.run([self.output_name], {self.input_name: self._x_host})[0]

    def close(self) -> None:
        """Release the session and the bound buffers."""
        self._binding = self._x_dev = self._x_host = self.output = None
        self.session = None
