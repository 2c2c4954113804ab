"""TensorRT engine builds: a strongly typed network from the exported ONNX, built for this GPU (enterprise
TensorRT) or ahead of time for target compute capabilities (TensorRT-RTX), through the engine cache of
:mod:`exporters.cache` (see :mod:`exporters.trt`)."""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from exporters.cache import cache_lookup, engine_key, engine_paths
from exporters.trt_flavours import Flavour, resolve_flavour
from exporters.trt_layers import _layer_summary, _network_types, parse_layer_info
from exporters.trt_probe import INSTALL_HINT, _make_logger, build_status, engine_environment, timing_cache_path

#: builder workspace default (GiB): a limit, not an allocation. ASAP-Net fp32 at 2048x2048 needs more than 4;
#: SPADE fp16 at 2048x2048 needs 11 (at 8 TensorRT-RTX asks for 8.17 GiB and fails); with 12 every engine of
#: results/trt-build builds (SPADE fp32 at 2048x2048 fails whatever the limit: see there)
DEFAULT_WORKSPACE_GB = 12.0
#: what every engine built here says about having been run
NOT_RUN_NOTE = "built ahead of time on a machine without a GPU; never executed here"


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
