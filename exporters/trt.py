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

The code lives in one module per job; this module is their public face (import from here):
:mod:`exporters.trt_probe` (availability, build environment, timing-cache path, the TensorRT logger),
:mod:`exporters.trt_build` (``build_engine``, ``EngineResult``, ``dynamic_profile``, ``workspace_hint``),
:mod:`exporters.trt_layers` (layer precisions from the builder's layer information),
:mod:`exporters.trt_child` (``build_in_child``: a build in a fresh process) and
:mod:`exporters.trt_run` (``check_engine_file``, ``read_sidecar``, ``TrtRunner``).
"""

from __future__ import annotations

from exporters.trt_build import (
    DEFAULT_WORKSPACE_GB,
    NOT_RUN_NOTE,
    EngineResult,
    _profiles,
    build_engine,
    dynamic_profile,
    workspace_hint,
)
from exporters.trt_child import build_in_child
from exporters.trt_layers import format_precisions, parse_layer_info, precision_counts
from exporters.trt_probe import (
    INSTALL_HINT,
    MIN_TRT_MAJOR,
    RTX_INSTALL_HINT,
    build_status,
    engine_environment,
    require_trt,
    timing_cache_path,
    trt_status,
)
from exporters.trt_run import TrtRunner, check_engine_file, read_sidecar, runtime_cache_path

__all__ = [
    "DEFAULT_WORKSPACE_GB", "NOT_RUN_NOTE", "EngineResult", "_profiles", "build_engine", "dynamic_profile",
    "workspace_hint", "build_in_child", "format_precisions", "parse_layer_info", "precision_counts",
    "INSTALL_HINT", "MIN_TRT_MAJOR", "RTX_INSTALL_HINT", "build_status", "engine_environment", "require_trt",
    "timing_cache_path", "trt_status", "TrtRunner", "check_engine_file", "read_sidecar", "runtime_cache_path",
]
