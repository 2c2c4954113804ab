"""Running a TensorRT engine: the runtime's validity check on the engine file, then ``TrtRunner``
(deserialize, ``set_tensor_address``, ``execute_async_v3``; see :mod:`exporters.trt`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from asapbench.errors import UserError
from asapbench.fsutil import (
    atomic_write_bytes,
    sha256_file,
)
from exporters import trt_flavours as F
from exporters.cache import environment_mismatch
from exporters.trt_flavours import Flavour, resolve_flavour
from exporters.trt_probe import _make_logger, _slug, require_trt


def _dtypes(trt, dt):
    """(numpy dtype, torch dtype) of a TensorRT DataType."""
    import torch

    table = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
             "int32": (np.int32, torch.int32), "int64": (np.int64, torch.int64), "int8": (np.int8, torch.int8),
             "bool": (np.bool_, torch.bool), "bfloat16": (None, torch.bfloat16), "uint8": (np.uint8, torch.uint8)}
    for name, pair in table.items():
        if hasattr(trt, name) and dt == getattr(trt, name):
            return pair
    raise UserError(f"unsupported TensorRT tensor type {dt}")


def read_sidecar(engine_path: str | Path) -> dict | None:
    """The ``<engine>.json`` sidecar written by :func:`build_engine` (None when absent, unreadable, not a
    regular file, too large or of the wrong shape: :func:`exporters.cache.read_json`)."""
    from exporters.cache import engine_sidecar_problem, read_json

    p = Path(engine_path)
    side, why = read_json(p.with_name(p.name + ".json"))
    return None if why or engine_sidecar_problem(side) else side


def check_engine_file(engine_path: str | Path, flavour: str | Flavour = "auto", device_id: int = 0) -> tuple[Flavour, dict | None]:
    """Everything that can be checked about an engine before it is deserialized: UserError (one line)
    for a missing, truncated, modified, foreign or stale engine. Returns (flavour, sidecar).

    Checks, in order: the file; its sidecar (flavour, version, CUDA flavour, targets against this GPU,
    size and sha256); the runtime's own validity check of the header (``get_engine_validity``:
    malformed or foreign files are caught even without a GPU).
    """
    path = Path(engine_path)
    if not path.is_file():
        raise UserError(f"engine file not found: {str(path)!r}; build it with `asapbench export --engine trt`")
    side = read_sidecar(path)
    if side is None and os.path.lexists(path.with_name(path.name + ".json")):
        raise UserError(f"engine {path.name}: its sidecar {path.name}.json is unreadable or malformed; "
                        "rebuild the engine with `asapbench export --engine trt`")
    built = (side or {}).get("key") or {}
    choice = flavour.name if isinstance(flavour, Flavour) else (flavour or "auto")
    if built.get("flavour") and choice != "auto" and F.FLAVOURS.get(built["flavour"]) is not F.FLAVOURS.get(
            {"trt": "tensorrt"}.get(choice, choice)):
        raise UserError(f"engine {path.name} was built with {F.FLAVOURS[built['flavour']].label}, not --trt {choice}; "
                        f"run it with --trt {built['flavour']} or rebuild it")
    f = F.FLAVOURS[built["flavour"]] if built.get("flavour") else resolve_flavour(choice)
    trt = F.load(f)
    if side:
        here: dict[str, Any] = {"flavour": f.name, "tensorrt": trt.__version__, "tensorrt_cuda": F.cuda_flavour(f),
                                "sm": F.current_sm(device_id)}
        if not f.gpu_free_build and F.gpu_visible()[0]:
            import torch

            cc = torch.cuda.get_device_capability(device_id)
            here.update(cuda_runtime=torch.version.cuda, gpu_name=torch.cuda.get_device_name(device_id),
                        compute_capability=f"{cc[0]}.{cc[1]}")
        diff = environment_mismatch(side, here)
        if diff:
            raise UserError(f"engine {path.name} was built for another setup ({'; '.join(diff)}); "
                            "rebuild it here with `asapbench export --engine trt`")
        size = path.stat().st_size
        if side.get("engine_bytes") not in (None, size) or (side.get("engine_sha256") and side["engine_sha256"] != sha256_file(path)):
            raise UserError(f"engine {path.name} does not match its sidecar (modified or truncated: {size} bytes, "
                            f"built {side.get('engine_bytes')}); rebuild it with `asapbench export --engine trt`")
    logger = _make_logger(trt)
    runtime = trt.Runtime(logger)
    with open(path, "rb") as fh:
        header = fh.read(int(getattr(runtime, "engine_header_size", 0) or 64))
    problem = F.validity_problem(f, trt, runtime, header)
    if problem:
        gpu, gwhy = F.gpu_visible()
        if not gpu and "no NVIDIA driver" in problem:
            raise UserError(f"cannot run {f.label} engine {path.name} here: {gwhy}; "
                            "run it on a machine with an NVIDIA GPU and driver")
        raise UserError(f"{f.label} refuses engine {path.name}: {problem}; rebuild it with `asapbench export --engine trt`")
    return f, side


def runtime_cache_path(engine_path: str | Path, cache_dir: str | Path | None = None, device_id: int = 0) -> Path:
    """Where the TensorRT-RTX runtime cache (kernels compiled just in time) of an engine lives: one
    file per engine and GPU, under ``<cache_dir>/runtime-cache`` (default: next to the engine)."""
    import torch

    p = Path(engine_path)
    gpu = _slug(torch.cuda.get_device_name(device_id)) if torch.cuda.is_available() else "nogpu"
    base = Path(cache_dir) if cache_dir else p.parent / "runtime-cache"
    return base / f"{p.stem}.{gpu}.rtcache"


class TrtRunner:
    """Run a serialized engine: ``bind(x)`` once, then ``infer_bound()``; or ``infer(x)`` end to end.

    Args:
        engine_path: a ``.engine`` file from :func:`build_engine` (checked by :func:`check_engine_file`
            before it is deserialized).
        device_id: the CUDA device.
        buffers: ``"torch"`` (device tensors from torch, torch's current stream) or ``"pycuda"``
            (``pycuda.autoprimaryctx`` allocations and stream; ``output`` is then a host numpy array).
        flavour: ``auto`` (the engine's sidecar says), ``tensorrt`` or ``rtx``.
        runtime_cache_dir: TensorRT-RTX: folder of the runtime cache (default ``<engine folder>/runtime-cache``).
        warmup: TensorRT-RTX: ``bind`` runs the engine until just-in-time compilation is done
            (latency settled), so that nothing timed afterwards includes compilation.

    ``flavour`` (a :class:`Flavour`), ``label`` and ``note`` name what runs, for timing rows.
    """

    def __init__(self, engine_path: str | Path, device_id: int = 0, buffers: str = "torch",
                 flavour: str | Flavour = "auto", runtime_cache_dir: str | Path | None = None, warmup: bool = True):
        if buffers not in ("torch", "pycuda"):
            raise UserError(f"unknown buffer provider {buffers!r}; choose torch or pycuda")
        f, side = check_engine_file(engine_path, flavour, device_id)
        self.flavour, self.sidecar = f, side
        trt = require_trt(f.name)
        import torch

        path = Path(engine_path)
        self.trt, self.path, self.device_id, self.buffers = trt, path, device_id, buffers
        self.label = F.describe(f)
        self.warmup, self.warmup_info = warmup, None
        self._warmed: set[tuple[int, ...]] = set()
        self.note = ""
        torch.cuda.set_device(device_id)
        self._logger = _make_logger(trt)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"cannot load engine {path.name} ({'; '.join(self._logger.errors)[:200] or 'deserialization failed'}): "
                f"it is corrupt or was built by another {f.label} version or for another GPU; rebuild it with `asapbench export --engine trt`"
            )
        self._rt_cache = self._rt_config = None
        self.runtime_cache_path: Path | None = None
        self.runtime_cache_loaded = False
        if f.jit_kernels and hasattr(self.engine, "create_runtime_config"):
            self._rt_config = self.engine.create_runtime_config()
            self._rt_cache = self._rt_config.create_runtime_cache()
            self.runtime_cache_path = runtime_cache_path(path, runtime_cache_dir, device_id)
            if self.runtime_cache_path.is_file():
                self.runtime_cache_loaded = bool(self._rt_cache.deserialize(self.runtime_cache_path.read_bytes()))
            self._rt_config.set_runtime_cache(self._rt_cache)
            self.context = self.engine.create_execution_context(self._rt_config)
        else:
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise UserError(f"engine {path.name} has {len(self.inputs)} inputs and {len(self.outputs)} outputs; expected 1 and 1")
        self.input_name, self.output_name = self.inputs[0], self.outputs[0]
        self._in_np, self._in_torch = _dtypes(trt, self.engine.get_tensor_dtype(self.input_name))
        self._out_np, self._out_torch = _dtypes(trt, self.engine.get_tensor_dtype(self.output_name))
        self._x = None
        self._out = None
        self._bufs: dict[str, Any] = {}
        self._host_out = None
        if buffers == "pycuda":
            from asapbench.errors import require

            require("pycuda.autoprimaryctx", "trt", "for --buffers pycuda")
            import pycuda.driver as cuda

            self._cuda = cuda
            self._stream = cuda.Stream()

    # -- binding -------------------------------------------------------------------------------
    def bind(self, x) -> None:
        """Set the input shape, allocate the output and set both tensor addresses (TensorRT-RTX: then, the
        first time a shape is bound, warm up until the just-in-time kernels are compiled, see :meth:`warm_up`).

        torch buffers: ``x`` is a torch tensor (moved to the engine's device and dtype if needed).
        pycuda buffers: ``x`` (numpy or torch) is copied into a pycuda device allocation.
        """
        self._bind(x)
        shape = tuple(int(d) for d in x.shape)
        if self.flavour.jit_kernels and self.warmup and shape not in self._warmed:
            self.warm_up()  # once per input shape: kernels are compiled per shape
            self._warmed.add(shape)

    def _bind(self, x) -> None:
        shape = tuple(int(d) for d in x.shape)
        if not self.context.set_input_shape(self.input_name, shape):
            raise UserError(f"engine {self.path.name} does not accept input shape {list(shape)} (see its profile)")
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        if self.buffers == "torch":
            import torch

            dev = torch.device("cuda", self.device_id)
            self._x = x.to(device=dev, dtype=self._in_torch).contiguous()
            self._out = torch.empty(out_shape, dtype=self._out_torch, device=dev)
            self.context.set_tensor_address(self.input_name, self._x.data_ptr())
            self.context.set_tensor_address(self.output_name, self._out.data_ptr())
            return
        cuda = self._cuda
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        arr = np.ascontiguousarray(arr, dtype=self._in_np)
        self._host_out = cuda.pagelocked_empty(out_shape, self._out_np)
        for name, nbytes in ((self.input_name, arr.nbytes), (self.output_name, self._host_out.nbytes)):
            old = self._bufs.get(name)
            if old is None or old[1] < nbytes:
                self._bufs[name] = (cuda.mem_alloc(nbytes), nbytes)
            self.context.set_tensor_address(name, int(self._bufs[name][0]))
        cuda.memcpy_htod_async(self._bufs[self.input_name][0], arr, self._stream)
        self._stream.synchronize()

    def _sync(self) -> None:
        if self.buffers == "torch":
            import torch

            torch.cuda.current_stream(self.device_id).synchronize()
        else:
            self._stream.synchronize()

    def warm_up(self, min_runs: int = 3, max_runs: int = 100, max_seconds: float = 120.0, settle: float = 1.25) -> dict:
        """Run the bound engine until its latency has settled: the last ``min_runs`` runs each within
        ``settle`` x the fastest so far (TensorRT-RTX compiles kernels at first inference). Saves the
        runtime cache afterwards. Returns (and keeps in ``warmup_info``/``note``) what happened."""
        times: list[float] = []
        t_start = time.perf_counter()
        while len(times) < max_runs and time.perf_counter() - t_start < max_seconds:
            t0 = time.perf_counter()
            self.infer_bound()
            self._sync()
            times.append((time.perf_counter() - t0) * 1e3)
            best = min(times)
            if len(times) > min_runs and all(t <= settle * best for t in times[-min_runs:]):
                break
        settled = len(times) > min_runs and all(t <= settle * min(times) for t in times[-min_runs:])
        saved = self.save_runtime_cache()
        self.warmup_info = {"runs": len(times), "first_ms": round(times[0], 3), "settled_ms": round(times[-1], 3),
                            "seconds": round(time.perf_counter() - t_start, 2), "settled": settled,
                            "runtime_cache": str(self.runtime_cache_path) if self.runtime_cache_path else None,
                            "runtime_cache_loaded": self.runtime_cache_loaded, "runtime_cache_saved": saved}
        cache = ("runtime cache reused" if self.runtime_cache_loaded else "new runtime cache") if self.runtime_cache_path else "no runtime cache"
        self.note = (f"{self.label}: kernels compiled just in time; warmed up {len(times)} runs until compilation was "
                     f"done (first {times[0]:.1f} ms, then {times[-1]:.2f} ms{'' if settled else ', NOT settled'}; {cache})")
        return self.warmup_info

    def save_runtime_cache(self) -> bool:
        """Write the TensorRT-RTX runtime cache (atomically); False when there is none."""
        if self._rt_cache is None or self.runtime_cache_path is None:
            return False
        blob = self._rt_cache.serialize()
        if blob is None:
            return False
        try:
            self.runtime_cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.runtime_cache_path, bytes(blob))
        except OSError:  # a read-only cache: the kernels are compiled again next time, nothing is lost
            self.note = (self.note + "; " if self.note else "") + "runtime cache not saved (read-only folder)"
            return False
        return True

    def infer_bound(self) -> None:
        """Enqueue the engine on the bound buffers (asynchronous: synchronise before reading the clock)."""
        if self.buffers == "torch":
            import torch

            if self._x is None:
                raise RuntimeError("call bind(x) before infer_bound()")
            handle = torch.cuda.current_stream(self.device_id).cuda_stream
        else:
            if self._host_out is None:
                raise RuntimeError("call bind(x) before infer_bound()")
            handle = self._stream.handle
        if not self.context.execute_async_v3(handle):
            raise RuntimeError(f"{self.flavour.label} execute_async_v3 failed for {self.path.name}: {'; '.join(self._logger.errors)[-300:]}")

    @property
    def output(self):
        """The output of the last run: a torch CUDA tensor (torch buffers) or a host array (pycuda)."""
        if self.buffers == "torch":
            return self._out
        self._cuda.memcpy_dtoh_async(self._host_out, self._bufs[self.output_name][0], self._stream)
        self._stream.synchronize()
        return self._host_out

    def close(self) -> None:
        """Save the runtime cache (TensorRT-RTX), release the execution context, the engine and the buffers."""
        if self.context is not None:
            try:
                self.save_runtime_cache()
            except Exception:  # pragma: no cover - best effort on shutdown
                pass
        self._x = self._out = self._host_out = None
        self._bufs = {}
        self.context = self.engine = None
        self._rt_cache = self._rt_config = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Host array in, host array out (copies and synchronisation included)."""
        if self.buffers == "torch":
            import torch

            self.bind(torch.from_numpy(np.ascontiguousarray(x)))
            self.infer_bound()
            torch.cuda.current_stream(self.device_id).synchronize()
            return self._out.float().cpu().numpy()
        self.bind(x)
        self.infer_bound()
        return np.asarray(self.output, dtype=np.float32).copy()
