"""TensorRT engines from the exported ONNX (TensorRT 10.x and 11.x), an engine cache, and a runner.

Build (``build_engine``): a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
on 10.x, the only mode on 11.x), so precision comes from the ONNX graph -- an fp16 engine is built
from the fp16 ONNX of :mod:`exporters.fp16`; ``BuilderFlag.FP16`` (removed in 11.0) is never used.
A static ONNX gives one engine per resolution; a dynamic one gets a min/opt/max profile. A timing
cache file per TensorRT version and GPU is loaded and written back after every build. Engines go
through the cache of :mod:`exporters.cache`: ``<onnx stem>.<key>.engine`` plus a JSON sidecar
(TensorRT version, GPU name and compute capability, CUDA versions, ONNX sha256, build options,
build seconds, engine sha256), reused only when every key matches.

Run (``TrtRunner``): deserialize, allocate, ``set_tensor_address``, ``execute_async_v3`` on a stream;
device buffers from torch by default (``torch.cuda.current_stream()``), or from pycuda
(``pycuda.autoprimaryctx``, which shares torch's primary context -- never ``pycuda.autoinit``).

Nothing here runs without ``tensorrt`` and an NVIDIA GPU: :func:`trt_status` says which is missing.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from asapbench.errors import UserError
from asapbench.fsutil import atomic_write_bytes, atomic_write_json, sha256_file
from exporters.cache import cache_lookup, engine_key, engine_paths, environment_mismatch

INSTALL_HINT = "pip install 'asapbench[trt]' on a machine with an NVIDIA GPU"
MIN_TRT_MAJOR = 10


# --------------------------------------------------------------------------------------------
# Availability and environment
# --------------------------------------------------------------------------------------------
def trt_status() -> tuple[bool, str]:
    """(usable, reason): ``tensorrt`` (>= 10) imports AND a CUDA GPU is visible to torch."""
    import torch

    missing = []
    version = None
    try:
        import tensorrt as trt

        version = trt.__version__
    except Exception as exc:  # ImportError, or a broken install that fails while loading its libraries
        missing.append(f"the Python package 'tensorrt' is not importable ({type(exc).__name__}: {str(exc)[:80]})")
    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        missing.append(f"no CUDA GPU is visible ({why})")
    if missing:
        return False, f"TensorRT cannot run here: {' and '.join(missing)}; install with {INSTALL_HINT}"
    major = int(str(version).split(".")[0])
    if major < MIN_TRT_MAJOR:
        return False, f"TensorRT {version} is too old (need 10.x or 11.x); upgrade with {INSTALL_HINT}"
    return True, f"TensorRT {version} on {torch.cuda.get_device_name(0)}"


def require_trt():
    """Import tensorrt or raise UserError naming what is missing (package and/or GPU) and the fix."""
    ok, reason = trt_status()
    if not ok:
        raise UserError(reason)
    import tensorrt as trt

    return trt


def _tensorrt_cuda_flavour() -> str | None:
    """``cu12``/``cu13`` from the installed TensorRT wheel's distribution name, if any."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        m = re.match(r"tensorrt-(cu\d+)", name)
        if m:
            return m.group(1)
    return None


def _cuda_driver_version() -> str | None:
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        v = ctypes.c_int()
        if cuda.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"{v.value // 1000}.{(v.value % 1000) // 10}"
    return None


def engine_environment(device_id: int = 0) -> dict[str, Any]:
    """What an engine depends on besides its ONNX and options: TensorRT, CUDA and the GPU."""
    trt = require_trt()
    import torch

    cc = torch.cuda.get_device_capability(device_id)
    return {
        "tensorrt": trt.__version__,
        "tensorrt_cuda": _tensorrt_cuda_flavour(),
        "cuda_runtime": torch.version.cuda,
        "cuda_driver": _cuda_driver_version(),
        "gpu_name": torch.cuda.get_device_name(device_id),
        "compute_capability": f"{cc[0]}.{cc[1]}",
    }


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(s)).strip("-")


def timing_cache_path(out_dir: str | Path, env: Mapping[str, Any]) -> Path:
    """One timing cache per TensorRT version, GPU and compute capability (a cache is tied to all three)."""
    return Path(out_dir) / f"timing-trt{_slug(env['tensorrt'])}-{_slug(env['gpu_name'])}-sm{_slug(env['compute_capability'])}.cache"


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------
@dataclass
class EngineResult:
    """A built (or reused) engine and its sidecar."""

    engine_path: Path
    sidecar_path: Path
    sidecar: dict
    reused: bool


_LOGGER = None


def _make_logger(trt):
    """The process-wide TensorRT logger (TensorRT wants one logger for all builders and runtimes);
    it keeps the error messages since the last call, for our error messages."""
    global _LOGGER
    if _LOGGER is None:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(str(msg))

        _LOGGER = _Logger()
    _LOGGER.errors.clear()
    return _LOGGER


def _onnx_inputs(onnx_path: Path, onnx_sha: str) -> tuple[list[dict[str, Any]], dict | None]:
    """Input names/shapes of the ONNX (from its asapbench sidecar when it matches, else the file)."""
    side_path = onnx_path.with_suffix(".json")
    try:
        side = json.loads(side_path.read_text())
    except (OSError, ValueError):
        side = None
    if isinstance(side, dict) and side.get("onnx_sha256") == onnx_sha and "input" in side:
        return [side["input"]], side
    from exporters.onnx_export import verify_onnx_file

    proto = verify_onnx_file(onnx_path)
    inits = {i.name for i in proto.graph.initializer}
    ins = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        ins.append({"name": vi.name, "shape": dims})
    return ins, None


def _profiles(inputs: list[dict[str, Any]], dynamic_shapes: Mapping[str, Sequence[Sequence[int]]] | None) -> dict | None:
    """min/opt/max per dynamic input (None for a fully static ONNX)."""
    dyn = [i for i in inputs if any(not isinstance(d, int) or d <= 0 for d in i["shape"])]
    if not dyn:
        if dynamic_shapes:
            raise UserError("dynamic_shapes were given for a static ONNX; export with --dynamic or drop them")
        return None
    if not dynamic_shapes:
        names = ", ".join(i["name"] for i in dyn)
        raise UserError(
            f"the ONNX has dynamic inputs ({names}): give min/opt/max shapes, e.g. "
            "dynamic_shapes={'label': ((1, C, 256, 512), (1, C, 512, 1024), (1, C, 1024, 2048))} "
            "(the CLI derives them from --res)"
        )
    out = {}
    for i in dyn:
        if i["name"] not in dynamic_shapes:
            raise UserError(f"dynamic_shapes lacks the input {i['name']!r}")
        shapes = [tuple(int(v) for v in s) for s in dynamic_shapes[i["name"]]]
        if len(shapes) != 3 or any(len(s) != len(i["shape"]) for s in shapes):
            raise UserError(f"dynamic_shapes[{i['name']!r}] must be (min, opt, max) shapes of rank {len(i['shape'])}")
        mn, opt, mx = shapes
        if any(not (a <= b <= c) for a, b, c in zip(mn, opt, mx)):
            raise UserError(f"dynamic_shapes[{i['name']!r}]: need min <= opt <= max in every dimension, got {shapes}")
        for k, d in enumerate(i["shape"]):
            if isinstance(d, int) and d > 0 and not (mn[k] == opt[k] == mx[k] == d):
                raise UserError(f"dynamic_shapes[{i['name']!r}]: dimension {k} is fixed to {d} in the ONNX")
        out[i["name"]] = [list(mn), list(opt), list(mx)]
    return out


def _flag(trt, config, name: str) -> bool | None:
    """A builder flag's value, or None where this TensorRT has no such flag."""
    flag = getattr(trt.BuilderFlag, name, None)
    return None if flag is None else bool(config.get_flag(flag))


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    workspace_gb: float = 4.0,
    dynamic_shapes: Mapping[str, Sequence[Sequence[int]]] | None = None,
    timing_cache: str | Path | None = None,
    opt_level: int = 3,
    reuse: bool = True,
    progress: Callable[[str], None] | None = None,
    device_id: int = 0,
) -> EngineResult:
    """Build (or reuse from the cache) a TensorRT engine for ``onnx_path``.

    Args:
        onnx_path: an exported ONNX (fp16 engines come from fp16 ONNX files).
        out_dir: folder of the engine, its sidecar and the timing cache (default: the ONNX's folder).
        workspace_gb: builder workspace memory-pool limit in GiB.
        dynamic_shapes: ``{input: (min, opt, max)}`` for a dynamic ONNX (required there, refused for a static one).
        timing_cache: timing-cache file (default: one per TensorRT version and GPU in ``out_dir``).
        opt_level: ``builder_optimization_level`` (0-5; TensorRT's default is 3).
        reuse: return a cached engine when every key matches.
        progress: called with a short description at each stage.
        device_id: the CUDA device to build for.
    """
    trt = require_trt()
    import torch

    step = progress or (lambda s: None)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file not found: {str(onnx_path)!r}; export it first with `asapbench export`")
    if workspace_gb <= 0:
        raise UserError(f"--workspace-gb must be positive, got {workspace_gb}")
    if not 0 <= int(opt_level) <= 5:
        raise UserError(f"optimisation level must be 0..5, got {opt_level}")
    from asapbench.fsutil import ensure_writable_dir

    out = ensure_writable_dir(out_dir or onnx_path.parent, "engine folder")
    torch.cuda.set_device(device_id)
    onnx_sha = sha256_file(onnx_path)
    inputs, onnx_side = _onnx_inputs(onnx_path, onnx_sha)
    profiles = _profiles(inputs, dynamic_shapes)
    env = engine_environment(device_id)
    options = {
        "strongly_typed": True,
        "workspace_gb": float(workspace_gb),
        "opt_level": int(opt_level),
        "profiles": profiles,
        "static_shapes": {i["name"]: i["shape"] for i in inputs} if profiles is None else None,
    }
    key = engine_key(onnx_sha, env, options)
    engine_path, sidecar_path = engine_paths(out, onnx_path.stem, key)
    if reuse:
        side, reason = cache_lookup(engine_path, sidecar_path, key)
        step(f"engine cache: {reason}")
        if side is not None:
            return EngineResult(engine_path, sidecar_path, side, reused=True)

    step("parsing the ONNX")
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise UserError(f"TensorRT {trt.__version__} has no strongly typed networks; {INSTALL_HINT} (10.x or 11.x)")
    network = builder.create_network(1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise UserError(
            f"TensorRT cannot parse {onnx_path.name} ({'; '.join(errs)[:300]}); "
            "the file is corrupt or uses an unsupported op: re-export it with `asapbench export`"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in profiles.items():
            profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
        config.add_optimization_profile(profile)
    tc_path = Path(timing_cache) if timing_cache else timing_cache_path(out, env)
    tc_bytes = b""
    if tc_path.is_file():
        tc_bytes = tc_path.read_bytes()
    cache = config.create_timing_cache(tc_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        tc_bytes = b""  # unreadable or from another device/version: start a fresh one
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    step(f"building the engine (TensorRT {trt.__version__}, workspace {workspace_gb:g} GiB)")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise UserError(
            f"TensorRT failed to build an engine for {onnx_path.name}: {'; '.join(logger.errors)[:300] or 'no error logged'}; "
            "try a larger --workspace-gb"
        )
    data = bytes(serialized)
    atomic_write_bytes(engine_path, data)
    atomic_write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "file": engine_path.name,
        "onnx": str(onnx_path.resolve()),
        "onnx_sha256": onnx_sha,
        "model": (onnx_side or {}).get("model"),
        "preset": (onnx_side or {}).get("preset"),
        "resolution": (onnx_side or {}).get("resolution"),
        "precision": (onnx_side or {}).get("precision"),
        "environment": env,
        "build_options": options,
        "tf32_allowed": _flag(trt, config, "TF32"),
        "timing_cache": str(tc_path),
        "timing_cache_reused": bool(tc_bytes),
        "build_seconds": round(build_s, 3),
        "engine_sha256": sha256_file(engine_path),
        "engine_bytes": len(data),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "key": key,
    }
    atomic_write_json(sidecar_path, sidecar)
    return EngineResult(engine_path, sidecar_path, sidecar, reused=False)


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------
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


class TrtRunner:
    """Run a serialized engine: ``bind(x)`` once, then ``infer_bound()``; or ``infer(x)`` end to end.

    Args:
        engine_path: a ``.engine`` file from :func:`build_engine` (its ``.json`` sidecar, when present,
            is checked against this machine's TensorRT version and GPU first).
        device_id: the CUDA device.
        buffers: ``"torch"`` (device tensors from torch, torch's current stream) or ``"pycuda"``
            (``pycuda.autoprimaryctx`` allocations and stream; ``output`` is then a host numpy array).
    """

    def __init__(self, engine_path: str | Path, device_id: int = 0, buffers: str = "torch"):
        trt = require_trt()
        import torch

        if buffers not in ("torch", "pycuda"):
            raise UserError(f"unknown buffer provider {buffers!r}; choose torch or pycuda")
        path = Path(engine_path)
        if not path.is_file():
            raise UserError(f"engine file not found: {str(path)!r}; build it with `asapbench export --engine trt`")
        self.trt, self.path, self.device_id, self.buffers = trt, path, device_id, buffers
        torch.cuda.set_device(device_id)
        side_path = path.with_name(path.name + ".json")
        self.sidecar = None
        if side_path.is_file():
            try:
                self.sidecar = json.loads(side_path.read_text())
            except ValueError:
                self.sidecar = None
            if self.sidecar:
                diff = environment_mismatch(self.sidecar, engine_environment(device_id))
                if diff:
                    raise UserError(
                        f"engine {path.name} was built for another setup ({'; '.join(diff)}); "
                        "rebuild it here with `asapbench export --engine trt`"
                    )
                want = self.sidecar.get("engine_sha256")
                if want and want != sha256_file(path):
                    raise UserError(f"engine {path.name} does not match its sidecar (modified or truncated); rebuild it")
        self._logger = _make_logger(trt)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"cannot load engine {path.name} ({'; '.join(self._logger.errors)[:200] or 'deserialization failed'}): "
                "it is corrupt or was built by another TensorRT version or GPU; rebuild it with `asapbench export --engine trt`"
            )
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
        """Set the input shape, allocate the output and set both tensor addresses.

        torch buffers: ``x`` is a torch tensor (moved to the engine's device and dtype if needed).
        pycuda buffers: ``x`` (numpy or torch) is copied into a pycuda device allocation.
        """
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
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path.name}: {'; '.join(self._logger.errors)[-300:]}")

    @property
    def output(self):
        """The output of the last run: a torch CUDA tensor (torch buffers) or a host array (pycuda)."""
        if self.buffers == "torch":
            return self._out
        self._cuda.memcpy_dtoh_async(self._host_out, self._bufs[self.output_name][0], self._stream)
        self._stream.synchronize()
        return self._host_out

    def close(self) -> None:
        """Release the execution context, the engine and the buffers."""
        self._x = self._out = self._host_out = None
        self._bufs = {}
        self.context = self.engine = None

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


def dynamic_profile(input_nc: int, resolutions: Sequence[tuple[int, int]], batch: int = 1,
                    min_size: tuple[int, int] | None = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) NCHW shapes covering ``resolutions``: opt at the first, min/max over all
    (with one resolution, min goes down to ``min_size`` when given); batch 1 .. ``batch``."""
    hs = [r[0] for r in resolutions]
    ws = [r[1] for r in resolutions]
    mn_h, mn_w = min(hs), min(ws)
    if len(resolutions) == 1 and min_size:
        mn_h, mn_w = min_size
    return (
        (1, input_nc, mn_h, mn_w),
        (batch, input_nc, resolutions[0][0], resolutions[0][1]),
        (batch, input_nc, max(hs), max(ws)),
    )

