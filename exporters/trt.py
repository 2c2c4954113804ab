"""TensorRT engines from the exported ONNX, an engine cache, and a runner -- one code path for two
flavours (:mod:`exporters.trt_flavours`): enterprise TensorRT 10.x/11.x (``--trt tensorrt``) and
TensorRT for RTX 1.x (``--trt rtx``).

Build (``build_engine``): a strongly typed network, so precision comes from the ONNX graph -- an fp16
engine is built from the fp16 ONNX of :mod:`exporters.fp16`; ``BuilderFlag.FP16`` (removed in 11.0,
absent from RTX) is never used. A static ONNX gives one engine per resolution; a dynamic one gets a
min/opt/max profile.

- Enterprise TensorRT builds on (and for) the GPU of this machine; a timing cache file per TensorRT
  version and GPU is loaded and written back after every build.
- TensorRT-RTX builds ahead of time, **without a GPU**, for a list of target compute capabilities
  (``targets``, default 8.6/8.9/12.0); no timing cache (a deprecated no-op that forces a GPU query).

Engines go through the cache of :mod:`exporters.cache`: ``<onnx stem>.<key>.engine`` plus a JSON
sidecar (flavour, version, CUDA flavour, targets or GPU, ONNX sha256, build options, build seconds,
engine sha256, the engine's layer precisions), reused only when every key matches. Layer precisions
come from the builder's own layer information (``ProfilingVerbosity.DETAILED`` and the verbose build
log), which needs no GPU.

Run (``TrtRunner``): the runtime's validity check on the engine header first (a foreign, stale or
corrupt engine is refused in one line), then deserialize, ``set_tensor_address``, ``execute_async_v3``.
TensorRT-RTX compiles kernels just in time: the runner keeps a runtime cache next to the engine
cache and warms up until compilation is done before anything is timed. Device buffers from torch by
default, or from pycuda (``pycuda.autoprimaryctx`` -- never ``pycuda.autoinit``).

Running needs an NVIDIA GPU and driver: :func:`trt_status` says what is missing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asapbench.errors import UserError
from asapbench.fsutil import (
    DiskFull,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    is_out_of_space,
    sha256_file,
)
from exporters import trt_flavours as F
from exporters.cache import cache_lookup, engine_key, engine_paths, environment_mismatch
from exporters.trt_flavours import Flavour, resolve_flavour

INSTALL_HINT = "pip install 'asapbench[trt]' on a machine with an NVIDIA GPU"
RTX_INSTALL_HINT = "pip install 'asapbench[trt-rtx]' (TensorRT for RTX: builds without a GPU, runs on RTX GPUs)"
MIN_TRT_MAJOR = 10
#: builder workspace default (GiB): a limit, not an allocation. ASAP-Net fp32 at 2048x2048 needs more than 4;
#: SPADE fp16 at 2048x2048 needs 11 (at 8 TensorRT-RTX asks for 8.17 GiB and fails); with 12 every engine of
#: results/trt-build builds (SPADE fp32 at 2048x2048 fails whatever the limit: see there)
DEFAULT_WORKSPACE_GB = 12.0
#: what every engine built here says about having been run
NOT_RUN_NOTE = "built ahead of time on a machine without a GPU; never executed here"


# --------------------------------------------------------------------------------------------
# Availability and environment
# --------------------------------------------------------------------------------------------
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

    @property
    def flavour(self) -> str:
        """``tensorrt`` or ``rtx``."""
        return (self.sidecar.get("key") or {}).get("flavour", "tensorrt")

    @property
    def label(self) -> str:
        """'TensorRT-RTX 1.7.1.116 (cu12), targets 8.6/8.9/12.0' -- for rows, tables and logs."""
        return self.sidecar.get("flavour_label") or self.flavour

    @property
    def targets(self) -> list[int]:
        return list((self.sidecar.get("key") or {}).get("targets") or self.sidecar.get("targets") or [])


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


# ---- layer precisions from the builder's layer information ------------------------------------
#: network layer types that decide a built layer's category (first match wins)
_CATEGORIES = (
    ("normalization", ("NORMALIZATION",)),
    ("convolution", ("CONVOLUTION", "DECONVOLUTION")),
    ("matmul", ("MATRIX_MULTIPLY",)),
)
#: built-layer kinds that only move or cast data around a compute layer (not the compute itself)
_DATA_KINDS = {"kgen", "reformat", "shuffle", "signal", "wait", "noop", "copy"}
_DT = {"half": "half", "float": "float", "bfloat16": "bf16", "int8": "int8", "fp8": "fp8", "int32": "int32",
       "int64": "int64", "bool": "bool", "float16": "half", "float32": "float"}


_FLOATS = {"half", "float", "bf16", "fp8"}
_WIDTH = {"fp8": 0, "half": 1, "bf16": 1, "float": 2}


def _dtype_name(s: str) -> str:
    return _DT.get(s.strip().lower(), s.strip().lower())


def parse_layer_info(text: str, network_types: Mapping[str, str]) -> list[dict[str, Any]]:
    """Built layers from the builder's verbose layer information (``ProfilingVerbosity.DETAILED``).

    Two formats: TensorRT-RTX's ``Layers:`` block (one line per built layer: ``Name: ..., LayerType: ...,
    Inputs: [ {... Datatype: Half ...} ], ..., Metadata: [ONNX Layer: node]``) and enterprise TensorRT's
    ``Engine Layer Information:`` block (``Layer(Kind): name, Tactic: ..., in (Half[1,3,...]) -> ...``).
    ``network_types`` maps ONNX node / network layer names to their network layer type.
    Returns ``[{"name", "kind", "category", "precision", "onnx_layers"}]``.
    """
    out = []
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"Name: (.*?), LayerType: ([^,]*),", line)
        if m:
            name, kind = m.group(1), m.group(2).strip()
            ins = re.search(r"Inputs: \[(.*?)\], (?:Constants|Outputs)", line)
            consts = re.search(r"Constants: \[(.*?)\], Outputs", line)
            outs = re.search(r"Outputs: \[(.*?)\], (?:TacticName|StreamId|Metadata)", line)
            dts = re.findall(r"Datatype: (\w+)", ins.group(1)) if ins else []
            odts = re.findall(r"Datatype: (\w+)", outs.group(1)) if outs else []
            # a fused convolution's own precision is its weights' (4-D/5-D constants); its inputs may
            # include fp32 tensors of the fused element-wise ops
            weights = [dt for dims, dt in re.findall(r"Dimensions: \[([\d,]*)\][^}]*?Datatype: (\w+)",
                                                     consts.group(1) if consts else "") if dims.count(",") in (3, 4)]
            onnx_layers = re.findall(r"\[ONNX Layer: ([^\]]*)\]", line)
        else:
            m = re.match(r"Layer\((\w+)\): (.*?), Tactic: [^,]*, (.*)$", line)
            if not m:
                continue
            kind, name, io = m.group(1), m.group(2), m.group(3)
            dts = re.findall(r"\((\w+)\[", io.split("->")[0])
            odts = re.findall(r"\((\w+)\[", io.split("->")[-1])
            weights = []
            onnx_layers = [n.strip() for n in re.split(r"\s\+\s", name)]
        types = {network_types.get(n, "") for n in onnx_layers}
        fin = [d for d in dts if _dtype_name(d) in _FLOATS]
        fout = [d for d in odts if _dtype_name(d) in _FLOATS]
        category = "other"
        if fin or fout:  # layers that only move indices or shapes (int32/int64) compute nothing in float
            for cat, wanted in _CATEGORIES:
                if types & set(wanted) and (cat == "normalization" or kind.lower() not in _DATA_KINDS):
                    category = cat
                    break
        if category == "convolution" and weights:
            prec = weights[0]  # a fused convolution runs in its weights' precision
        elif category == "normalization":
            # strongly typed: a normalisation's input and output share its compute type. A Cast of the graph
            # fused into the same kernel (half -> float before the mean, float -> half after the scale) adds
            # the other type: the normalisation itself is then the wider of the two
            fl = [_dtype_name(d) for d in fin + fout]
            prec = max(fl, key=_WIDTH.get) if "CAST" in types else (fout or fin)[0]
        else:
            prec = (fin or dts or fout or odts or ["none"])[0]
        out.append({"name": name, "kind": kind, "category": category,
                    "precision": _dtype_name(prec), "onnx_layers": onnx_layers})
    return out


def precision_counts(layers: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{category: {precision: count}}`` over the built layers (plus ``all``)."""
    counts: dict[str, dict[str, int]] = {}
    for la in layers:
        for cat in (la["category"], "all"):
            c = counts.setdefault(cat, {})
            c[la["precision"]] = c.get(la["precision"], 0) + 1
    return counts


def format_precisions(counts: Mapping[str, Mapping[str, int]]) -> str:
    """'conv 42 half; matmul 5 half; norm 9 float' (empty categories left out)."""
    short = {"convolution": "conv", "matmul": "matmul", "normalization": "norm"}
    parts = []
    for cat, label in short.items():
        c = counts.get(cat) or {}
        if c:
            parts.append(f"{label} " + " + ".join(f"{n} {p}" for p, n in sorted(c.items(), key=lambda x: -x[1])))
    return "; ".join(parts) or "no layer information"


def _network_types(network) -> dict[str, str]:
    out = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        out[layer.name] = str(layer.type).split(".")[-1]
    return out


def _onnx_inputs(onnx_path: Path, onnx_sha: str) -> tuple[list[dict[str, Any]], dict | None]:
    """Input names/shapes of the ONNX (from its asapbench sidecar when it is sound and matches, else the file)."""
    from exporters.cache import onnx_sidecar_problem, read_json

    side, why = read_json(onnx_path.with_suffix(".json"))
    if why or onnx_sidecar_problem(side):
        side = None
    if side is not None and side["onnx_sha256"] == onnx_sha:
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


def _write_buffer(path: Path, buf) -> None:
    """Write a buffer (TensorRT's IHostMemory) atomically without copying it into a bytes object."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(memoryview(buf))
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def workspace_hint(errors: str, workspace_gb: float) -> str:
    """What to tell a user whose build failed: the ``--workspace-gb`` to pass when the builder ran out."""
    m = re.search(r"Requested size was (\d+) bytes", errors)
    if m:
        need = int(m.group(1)) / 2**30
        extra = need - workspace_gb
        return (f"the builder could not allocate {need:.2f} GiB (the {workspace_gb:g} GiB workspace limit "
                f"{'plus' if extra >= 0 else 'minus'} {abs(extra):.2f} GiB): try --workspace-gb "
                f"{max(int(need * 1.25) + 1, int(workspace_gb) + 1)}; if the request grows with the limit, the "
                "limit is not the cause: try fp16 or a smaller resolution")
    if re.search(r"mem(ory)? budget|workspace|out ?of ?memory", errors, re.IGNORECASE):
        return f"the builder ran out of workspace: pass --workspace-gb {max(2 * workspace_gb, 16):g}"
    return "try a larger --workspace-gb"


def _peak_rss_mb() -> float | None:
    """This process's peak resident set size so far (MiB), where the OS says."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(kb / 1024, 1)  # Linux: KiB
    except Exception:  # pragma: no cover - not on Linux
        return None


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    dynamic_shapes: Mapping[str, Sequence[Sequence[int]]] | None = None,
    timing_cache: str | Path | None = None,
    opt_level: int = 3,
    reuse: bool = True,
    progress: Callable[[str], None] | None = None,
    device_id: int = 0,
    flavour: str | Flavour = "auto",
    targets: Sequence[int] | str | None = None,
    option: str | None = None,
) -> EngineResult:
    """Build (or reuse from the cache) a TensorRT engine for ``onnx_path``.

    Args:
        onnx_path: an exported ONNX (fp16 engines come from fp16 ONNX files).
        out_dir: folder of the engine, its sidecar and the timing cache (default: the ONNX's folder).
        workspace_gb: builder workspace memory-pool limit in GiB (default 8: ASAP-Net fp32 at 2048x2048
            needs more than 4). A limit, not an allocation.
        dynamic_shapes: ``{input: (min, opt, max)}`` for a dynamic ONNX (required there, refused for a static one).
        timing_cache: timing-cache file (enterprise TensorRT only; default: one per version and GPU in ``out_dir``).
        opt_level: ``builder_optimization_level`` (0-5; TensorRT's default is 3).
        reuse: return a cached engine when every key matches.
        progress: called with a short description at each stage.
        device_id: the CUDA device to build for (enterprise TensorRT).
        flavour: ``auto``, ``tensorrt`` or ``rtx`` (see :func:`exporters.trt_flavours.resolve_flavour`).
        targets: compute capabilities to build for, e.g. ``[86, 89, 120]`` or ``"86,89,120"``
            (TensorRT-RTX; default its portable set). Enterprise TensorRT builds for this GPU only.
        option: the command-line option that names ``out_dir`` (``--out``, ``--cache-dir``), named by the
            errors about it (an unwritable folder, a full disk: the engine's size is known then).
    """
    f = flavour if isinstance(flavour, Flavour) else resolve_flavour(flavour)
    ok, reason = build_status(f.name)
    if not ok:
        raise UserError(reason)
    trt = F.load(f)
    step = progress or (lambda s: None)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file not found: {str(onnx_path)!r}; export it first with `asapbench export`")
    if workspace_gb <= 0:
        raise UserError(f"--workspace-gb must be positive, got {workspace_gb}")
    if not 0 <= int(opt_level) <= 5:
        raise UserError(f"optimisation level must be 0..5, got {opt_level}")
    target_list = F.parse_targets(targets) if isinstance(targets, str) else (list(targets) if targets else None)
    env = engine_environment(device_id, f, target_list)  # checks the targets (UserError naming the valid ones)
    out = Path(out_dir or onnx_path.parent)
    if not f.gpu_free_build:
        import torch

        torch.cuda.set_device(device_id)
    onnx_sha = sha256_file(onnx_path)
    inputs, onnx_side = _onnx_inputs(onnx_path, onnx_sha)
    profiles = _profiles(inputs, dynamic_shapes)
    options = {
        "strongly_typed": True,
        "workspace_gb": float(workspace_gb),
        "opt_level": int(opt_level),
        "profiles": profiles,
        "static_shapes": {i["name"]: i["shape"] for i in inputs} if profiles is None else None,
        "profiling_verbosity": "detailed",
    }
    key = engine_key(onnx_sha, env, options)
    engine_path, sidecar_path = engine_paths(out, onnx_path.stem, key)
    if reuse:
        side, why = cache_lookup(engine_path, sidecar_path, key)
        step(f"engine cache: {why}")
        if side is not None:  # reused from a read-only cache too: the write test comes after
            return EngineResult(engine_path, sidecar_path, side, reused=True)
    from asapbench.fsutil import ensure_writable_dir

    what = f"{option} folder" if option else "engine folder"
    ensure_writable_dir(out, what)
    step(f"parsing the ONNX ({F.describe(f)})")
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network, parser, parse_s = _parse_network(trt, f, builder, logger, onnx_path)  # parser owns the weights: kept
    net_types = _network_types(network)
    config = _builder_config(trt, f, builder, env, profiles, workspace_gb, opt_level)
    tc_path, tc_bytes = _use_timing_cache(config, out, env, timing_cache) if f.timing_cache else (None, b"")
    where = f"targets {', '.join(F.sm_label(t) for t in env['targets'])}"
    step(f"building the engine ({F.describe(f)}, {where}, workspace {workspace_gb:g} GiB)")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        errs = "; ".join(logger.errors)
        raise UserError(f"{f.label} failed to build an engine for {onnx_path.name} ({where}): "
                        f"{errs[:300] or 'no error logged'}; {workspace_hint(errs, workspace_gb)}")
    layers = parse_layer_info("\n".join(logger.layer_info), net_types)
    nbytes = int(serialized.nbytes)
    try:
        _write_buffer(engine_path, serialized)
    except OSError as exc:
        if is_out_of_space(exc):
            raise DiskFull(out, nbytes + 2**20, what) from None  # the engine, and about 1 MiB for its sidecar
        raise
    del serialized, parser
    if tc_path is not None:
        atomic_write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "file": engine_path.name,
        **_engine_description(f, env, onnx_path, onnx_sha, onnx_side),
        "build_options": options,
        "tf32_allowed": _flag(trt, config, "TF32"),
        "timing_cache": str(tc_path) if tc_path else None,
        "timing_cache_reused": bool(tc_bytes),
        "parse_seconds": round(parse_s, 3),
        "build_seconds": round(build_s, 3),
        "build_peak_rss_mb": _peak_rss_mb(),
        "engine_sha256": sha256_file(engine_path),
        "engine_bytes": nbytes,
        **_layer_summary(layers),
        "executed": False,
        "note": (NOT_RUN_NOTE if not F.gpu_visible()[0] else "built here; not executed by the build")
        + ("; TensorRT-RTX compiles its kernels just in time on the target GPU at first inference"
           if f.jit_kernels else ""),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "key": key,
    }
    atomic_write_json(sidecar_path, sidecar)
    return EngineResult(engine_path, sidecar_path, sidecar, reused=False)


def _parse_network(trt, f: Flavour, builder, logger, onnx_path: Path):
    """(strongly typed network parsed from ``onnx_path``, its parser, parse seconds); UserError when it does
    not parse. The parser holds the weights the network points to: keep it until the engine is built."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise UserError(f"TensorRT {trt.__version__} has no strongly typed networks; {INSTALL_HINT} (10.x or 11.x)")
    network = builder.create_network(1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise UserError(
            f"{f.label} cannot parse {onnx_path.name} ({'; '.join(errs)[:300]}); "
            "the file is corrupt or uses an unsupported op: re-export it with `asapbench export`"
        )
    return network, parser, time.perf_counter() - t0


def _builder_config(trt, f: Flavour, builder, env: Mapping[str, Any], profiles: dict | None, workspace_gb: float,
                    opt_level: int):
    """The builder configuration: workspace limit, optimisation level, detailed layer information, the
    targets (TensorRT-RTX) and the optimisation profile of a dynamic ONNX."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    F.apply_targets(f, trt, config, env["targets"])
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in profiles.items():
            profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
        config.add_optimization_profile(profile)
    return config


def _use_timing_cache(config, out: Path, env: Mapping[str, Any], timing_cache: str | Path | None) -> tuple[Path, bytes]:
    """Load the timing cache (enterprise TensorRT) into ``config``: (its path, the bytes it held)."""
    tc_path = Path(timing_cache) if timing_cache else timing_cache_path(out, env)
    tc_bytes = tc_path.read_bytes() if tc_path.is_file() else b""
    cache = config.create_timing_cache(tc_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        tc_bytes = b""  # unreadable or from another device/version: start a fresh one
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return tc_path, tc_bytes


def _engine_description(f: Flavour, env: Mapping[str, Any], onnx_path: Path, onnx_sha: str,
                        onnx_side: dict | None) -> dict[str, Any]:
    """The sidecar's account of what the engine is: flavour, version, targets, and the ONNX it came from."""
    label = F.describe(f) + (f", targets {'/'.join(F.sm_label(t) for t in env['targets'])}" if f.gpu_free_build
                             else f", {env.get('gpu_name')}")
    side = onnx_side or {}
    return {
        "flavour": f.name,
        "flavour_label": label,
        "trt_version": env["tensorrt"],
        "cuda_flavour": env["tensorrt_cuda"],
        "targets": env["targets"],
        "onnx": str(onnx_path.resolve()),
        "onnx_sha256": onnx_sha,
        "model": side.get("model"),
        "preset": side.get("preset"),
        "resolution": side.get("resolution"),
        "precision": side.get("precision"),
        "environment": env,
    }


def _layer_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Layer precisions as counts, as text, and the built compute layers [name, kind, category, precision, ONNX nodes]."""
    counts = precision_counts(layers)
    return {
        "layer_precisions": counts,
        "layer_precisions_text": format_precisions(counts),
        "layers_built": len(layers),
        "compute_layers": [[la["name"], la["kind"], la["category"], la["precision"], la["onnx_layers"]]
                           for la in layers if la["category"] != "other"],
    }


def build_in_child(onnx_path: str | Path, out_dir: str | Path, timeout_s: float = 3600, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`build_engine` in a fresh Python process and return ``{"ok", "sidecar" | "error",
    "peak_rss_mb", "wall_s"}``: the peak RSS is the child's own (``ru_maxrss``), i.e. the build alone."""
    import subprocess
    import sys

    args = {"onnx_path": str(onnx_path), "out_dir": str(out_dir), **kwargs}
    code = "import sys; from exporters.trt import _child_main; _child_main()"
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", code], input=json.dumps(args), capture_output=True, text=True, check=False,
                           timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"build timed out after {timeout_s:g} s", "peak_rss_mb": None,
                "wall_s": round(time.perf_counter() - t0, 1)}
    wall = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode == 0 and lines:
        res = json.loads(lines[-1])
    else:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        res = {"ok": False, "error": f"build process exited {r.returncode} ({tail})", "peak_rss_mb": None}
    res["wall_s"] = wall
    return res


def _child_main() -> None:  # pragma: no cover - run in a child process by build_in_child
    import resource
    import sys

    args = json.loads(sys.stdin.read())
    try:
        r = build_engine(**args)
        res = {"ok": True, "reused": r.reused, "sidecar": r.sidecar, "engine": str(r.engine_path)}
    except UserError as exc:
        res = {"ok": False, "error": str(exc)}
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    sys.stdout.write(json.dumps(res, default=str) + "\n")


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
