"""Per-stage time, MACs and achieved GFLOP/s of one generator on one backend (``asapbench profile``).

A model is cut into its main stages (:func:`stage_plan`): ASAP-Net = input encoding, low-res stream,
pixelwise stream; pix2pixHD = front, residual blocks, back (+ input pyramid and local enhancer);
SPADE = head, SPADE blocks, out; pix2pix U-Net = down path, up path. Any other generator is one
stage. For each stage the result gives its median time, its MACs (counted on the meta device as
:mod:`asapbench.counting` does, so the pixelwise stream counts the reference formulation's MACs) and
the achieved GFLOP/s beside the machine's GEMM peak for the precision in the backend's own library
(:func:`gemm_rate`: ``torch.mm`` for torch, a one-MatMul ONNX model in onnxruntime (MLAS); ``gemm_size``^3 in that
precision, measured in the same run, before and after); ``fraction_of_gemm`` is each stage's fraction of that
peak (the table's "% of peak"), and the JSON records the CPU's ISA flags (``cpu_isa``). Times are medians over the rounds;
the JSON also has each one's minimum (``min_ms``), the better estimate on a busy machine.

- ``torch``: the stages run one after another as PyTorch calls timed with ``perf_counter``; every
  round also times the whole ``model(x)`` so the sum of the stages can be compared with it. The
  staged output is checked against ``model(x)``.
- ``onnxruntime``: the model is exported (fast pixelwise path, no parity gate) and run with `run`'s session
  settings (:func:`exporters.ort.make_session`) plus ``SessionOptions.enable_profiling``; kernel times are grouped by stage through each node's module
  path (``pkg.torch.onnx.name_scopes``) or, for functional code at the top level, its source line;
  nodes ORT inserts (layout reorders) count with the next kernel's stage; the whole-model time is
  ORT's own ``model_run`` event, and the time between kernels is reported as ``(runtime overhead)``.

``--precision bf16`` (torch only, on a CPU with AVX-512 BF16 or AMX): the model in bf16 as ``asapbench run``
times it (``--cast auto``: the whole model and its input cast to ``torch.bfloat16``, or, when that fails the
gate and the model has one, its mixed variant: ASAP-Net's pixelwise stream in bf16, low-res stream in fp32;
``--cast whole|mixed`` picks one), the GEMM rate measured in bf16 (and in fp32 for stages that compute in
fp32, read off their outputs' dtype), and the output compared with the fp32 model's (``bf16_vs_fp32``: PSNR,
max |error|, NaN/Inf, whether it meets the gate ``run`` applies, which form was profiled and every form
judged; a profile is reported either way).

onnx and onnxruntime are imported inside the functions that need them only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import statistics
import tempfile
import time
from typing import Any

import torch
from torch import nn

from asapbench.errors import UserError
from asapbench.stages import StagePlan

BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16")
GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OTHER = "(other)"
OVERHEAD = "(runtime overhead)"

def stage_plan(model: nn.Module) -> StagePlan:
    """The stages of ``model``: its own plan (``Generator.stage_plan``, next to each model's code); any other
    module is one stage ``model``."""
    own = getattr(model, "stage_plan", None)
    return own() if callable(own) else StagePlan([("model", model)])


# --------------------------------------------------------------------------------------------
# MACs per stage, GEMM rate
# --------------------------------------------------------------------------------------------
def stage_macs(model: nn.Module, height: int, width: int, batch: int = 1) -> dict[str, int]:
    """MACs of each stage (FLOPs / 2 from FlopCounterMode on a meta-device twin; see asapbench.counting)."""
    from torch.utils.flop_counter import FlopCounterMode

    from asapbench.counting import _meta_twin

    twin = _meta_twin(model)
    if getattr(model, "input_mode", "onehot") == "labels":
        twin.set_input_mode("labels")
        state: Any = torch.zeros(batch, twin.label_input_nc, height, width, dtype=torch.int32, device="meta")
    else:
        state = torch.empty(batch, twin.input_nc, height, width, device="meta")
    plan = stage_plan(twin)
    out: dict[str, int] = {}
    with torch.no_grad():
        for name, fn in plan.stages:
            counter = FlopCounterMode(display=False)
            with counter:
                state = fn(state)
            out[name] = int(counter.get_total_flops()) // 2
    return out


#: the library that computes a backend's GEMM (the peak its stages are set against)
GEMM_LIBRARY = {"torch": "torch.mm (MKL/oneDNN)", "torch-compile": "torch.mm (MKL/oneDNN)",
                "onnxruntime": "onnxruntime MatMul (MLAS)", "openvino": "OpenVINO MatMul (oneDNN)"}
#: backends that share one library (and so one measured peak)
GEMM_SAME_AS = {"torch-compile": "torch"}
#: how long one peak measurement may time (after one untimed run): at least one timed run, at most ``repeats``
GEMM_MAX_SECONDS = 0.6


def gemm_rate(precision: str = "fp32", n: int = 2048, repeats: int = 3, backend: str = "torch",
              threads: int | None = None, max_seconds: float | None = None) -> dict[str, Any]:
    """The machine's GEMM rate in ``backend``'s own library: median GFLOP/s of an ``n x n`` by ``n x n`` product of
    ``precision`` (``torch.mm`` for torch; a one-MatMul ONNX model with a constant ``n x n`` weight in onnxruntime,
    run by the runner's session (:class:`exporters.ort.OrtRunner`), and in OpenVINO, compiled with the runner's
    options (:func:`asapbench.bench.runner_openvino.compile_config`)). One untimed run, then ``repeats`` timed runs,
    or fewer once ``max_seconds`` have been timed. Where the library cannot compute ``precision`` natively, a record
    ``{"absent": reason}`` (no ``gflops``)."""
    if precision == "bf16":
        from asapbench.bench import system

        ok, why = system.cpu_bf16_support()
        if not ok:
            return {"op": f"GEMM {precision}", "absent": why}
    fn, op, close = _gemm_fn(GEMM_SAME_AS.get(backend, backend), precision, n, threads)
    if fn is None:
        return {"op": op, "absent": close}
    try:
        fn()
        times: list[float] = []
        while len(times) < repeats:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if max_seconds is not None and sum(times) >= max_seconds:
                break
    finally:
        if callable(close):
            close()
    med = statistics.median(times)
    return {"op": op, "library": GEMM_LIBRARY.get(backend, backend), "n": n, "runs": len(times), "seconds": med,
            "gflops": 2 * n**3 / med / 1e9}


def _gemm_fn(backend: str, precision: str, n: int, threads: int | None):
    """``(run, op, close)`` for one GEMM of ``precision`` in ``backend``'s library, or ``(None, op, why not)``."""
    dims = f"{n}x{n} @ {n}x{n} {precision}"
    if backend == "torch":
        dtype = GEMM_DTYPES[precision]
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        return (lambda: torch.mm(a, b)), f"torch.mm {dims}", None
    if backend not in ("onnxruntime", "openvino"):
        return None, f"GEMM {dims}", f"no CPU GEMM peak for {backend}"
    if backend == "onnxruntime" and precision != "fp32":
        from asapbench.bench.backends import _ORT_CPU_BF16

        return None, f"onnxruntime MatMul {dims}", _ORT_CPU_BF16
    import numpy as np

    tmp = tempfile.TemporaryDirectory(prefix="asapbench-gemm-")
    path = _matmul_onnx(os.path.join(tmp.name, "matmul.onnx"), n)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    if backend == "onnxruntime":
        from exporters.ort import OrtRunner

        sess = OrtRunner(path, provider="cpu", threads=threads)
        sess.bind(a)

        def close():
            sess.close()
            tmp.cleanup()

        return sess.infer_bound, f"onnxruntime MatMul {dims}", close
    from asapbench.bench.runner_openvino import OV_PRECISION, compile_onnx

    compiled, eff = compile_onnx(path, precision, threads)
    if eff != OV_PRECISION[precision]:
        tmp.cleanup()
        return None, f"OpenVINO MatMul {dims}", f"OpenVINO compiles {precision} to {eff} on this CPU"
    req = compiled.create_infer_request()
    req.infer({0: a})
    return req.infer, f"OpenVINO MatMul {dims} (inference precision {eff})", tmp.cleanup


def _matmul_onnx(path: str, n: int) -> str:
    """A one-MatMul ONNX model ``Y = X @ W`` with ``X`` an ``n x n`` float input and ``W`` a constant ``n x n`` weight."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


#: environment variable: N of the N x N x N GEMM that ``asapbench run`` measures the peaks with (default 2048;
#: 0 skips the measurement, e.g. in tests: the peaks are then recorded as absent)
PEAK_GEMM_ENV = "ASAPBENCH_PEAK_GEMM"


def peak_gemm_size() -> int:
    """N of ``run``'s peak GEMM: ``$ASAPBENCH_PEAK_GEMM`` (UserError when not a whole number >= 0), else 2048."""
    raw = os.environ.get(PEAK_GEMM_ENV, "").strip()
    if not raw:
        return 2048
    if not raw.isdigit():
        raise UserError(f"{PEAK_GEMM_ENV}={raw!r} is not a whole number; set it to the GEMM size (e.g. 2048) or 0 to "
                        "skip the peak measurement")
    return int(raw)


def measure_peaks(backends: list[str], threads: int | None = None, n: int = 2048,
                  precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    """The CPU's fp32 and bf16 GEMM peak in the library of every backend in ``backends`` (:func:`gemm_rate`, once
    per library, each capped at :data:`GEMM_MAX_SECONDS` of timed runs): what ``asapbench run`` records in its environment (``peaks``) and sets each row's GFLOP/s against. A backend that
    cannot run here, or a precision its library cannot compute natively, gets ``{"absent": reason}``; ``n`` 0
    measures nothing (every peak absent)."""
    from asapbench.bench import backends as B

    threads = threads or torch.get_num_threads()  # what the sweep gives every runner
    out: dict[str, Any] = {"n": n, "threads": threads, "backends": {}}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    measured: dict[str, dict[str, Any]] = {}
    try:
        for name in backends:
            lib = GEMM_SAME_AS.get(name, name)
            if lib not in GEMM_LIBRARY:  # a GPU backend: no CPU peak
                continue
            if lib not in measured:
                why = f"not measured ({PEAK_GEMM_ENV}=0)" if n == 0 else B.unsupported_reason(lib, "cpu", "fp32")
                measured[lib] = {p: {"absent": why} if why else _peak_or_why(p, n, lib, threads) for p in precisions}
            out["backends"][name] = measured[lib]
    finally:
        torch.set_num_threads(old)
    return out


def _peak_or_why(precision: str, n: int, backend: str, threads: int) -> dict[str, Any]:
    """:func:`gemm_rate` for ``run``'s environment; a measurement that fails is recorded as absent with the error
    (the peak is context for the rows, never a reason to stop the run)."""
    try:
        return gemm_rate(precision, n, backend=backend, threads=threads, max_seconds=GEMM_MAX_SECONDS)
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"op": f"GEMM {precision}", "absent": f"measurement failed: {type(exc).__name__}: {first}"}


def fraction_of_peak(macs: float | None, seconds: float | None, peak_gflops: float | None) -> tuple[float | None, float | None]:
    """``(achieved GFLOP/s, fraction of the peak)`` of ``macs`` multiply-adds (2 FLOPs each) done in ``seconds``;
    None where a number is missing or not positive."""
    if not macs or not seconds or seconds <= 0:
        return None, None
    gflops = 2 * macs / seconds / 1e9
    return gflops, (gflops / peak_gflops if peak_gflops and peak_gflops > 0 else None)


# --------------------------------------------------------------------------------------------
# torch backend
# --------------------------------------------------------------------------------------------
def profile_torch(model: nn.Module, x: torch.Tensor, iters: int, warmup: int = 1) -> dict[str, Any]:
    """Median seconds per stage and of the whole ``model(x)``, alternated in every round."""
    plan = stage_plan(model)
    per: dict[str, list[float]] = {n: [] for n in plan.names}
    dtypes: dict[str, str | None] = {}
    whole: list[float] = []
    with torch.inference_mode():
        ref = model(x)
        for i in range(warmup + iters):
            state: Any = x
            for name, fn in plan.stages:
                t0 = time.perf_counter()
                state = fn(state)
                dt = time.perf_counter() - t0
                if i >= warmup:
                    per[name].append(dt)
                dtypes[name] = _float_dtype_of(state)
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                whole.append(time.perf_counter() - t0)
        check = float((state - ref).abs().max())
    return {
        "stages": {n: statistics.median(v) for n, v in per.items()},
        "stages_min": {n: min(v) for n, v in per.items()},
        "whole_s": statistics.median(whole),
        "whole_min_s": min(whole),
        "stage_output_max_abs_vs_model": check,
        "rounds": iters,
        "stage_dtypes": dtypes,
    }


def _float_dtype_of(state: Any) -> str | None:
    """The precision a stage computed in, read off its output: the last floating tensor in it (ASAP-Net's
    low-res stage returns ``(labels, params)``), as ``fp32``/``bf16``/``fp16``; None if it has none."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    items = state if isinstance(state, (tuple, list)) else (state,)
    found = [names.get(t.dtype) for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------
# onnxruntime backend
# --------------------------------------------------------------------------------------------
def _node_stage(node, plan: StagePlan) -> str:
    md = {e.key: e.value for e in node.metadata_props}
    scopes: list[str] = []
    raw = md.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            scopes = [s for s in ast.literal_eval(raw) if isinstance(s, str)]
        except (ValueError, SyntaxError):
            scopes = []
    for s in reversed(scopes):  # the deepest listed module wins
        if s in plan.scopes:
            return plan.scopes[s]
    trace = md.get("pkg.torch.onnx.stack_trace", "")
    hits = [(trace.rfind(sub), stage) for sub, stage in plan.calls if sub in trace]
    if hits:
        return max(hits)[1]  # the innermost (last) matching frame
    if len(plan.stages) == 1:
        return plan.names[0]
    return OTHER


def node_stages(proto, plan: StagePlan) -> dict[str, str]:
    """ONNX node name (and the names of its outputs) -> stage, for every node of the exported graph."""
    out: dict[str, str] = {}
    for nd in proto.graph.node:
        st = _node_stage(nd, plan)
        out[nd.name] = st
        for o in nd.output:
            out.setdefault(o, st)
    return out


def _stage_of_kernel(name: str, stages: dict[str, str]) -> str | None:
    """The stage of an onnxruntime kernel, or None for a node ORT inserted (layout reorders)."""
    if name in stages:
        return stages[name]
    # ORT rewrites name their nodes after an original node or its output ("conv2d_6_nchwc",
    # "node_slice_10/GatherSliceToSplitFusion", "<name>_fused ..."): strip, then look for a contained name
    base = re.split(r"[/ ]", name)[0]
    base = re.sub(r"(_nchwc|_token_\d+)+$", "", base)
    if base in stages:
        return stages[base]
    best = ""
    for orig in stages:
        if len(orig) > len(best) and orig in name:
            best = orig
    return stages[best] if best else None


def profile_onnxruntime(model: nn.Module, x: torch.Tensor, iters: int, threads: int | None,
                        warmup: int = 1) -> dict[str, Any]:
    """Export ``model`` (no parity gate), run it in onnxruntime with profiling, group kernel times by stage."""
    from asapbench.errors import require

    require("onnxruntime", extra="ort", why="for --backend onnxruntime")
    from exporters.onnx_export import torch_to_onnx
    from exporters.ort import make_session

    plan = stage_plan(model)
    with torch.no_grad():
        proto = torch_to_onnx(model, x)
        ref = model(x).numpy()
    stages = node_stages(proto, plan)
    with tempfile.TemporaryDirectory(prefix="asapbench-profile-") as tmp:
        sess = make_session(proto, threads=threads, profile_prefix=os.path.join(tmp, "ort"))  # run's settings
        feed = {sess.get_inputs()[0].name: x.numpy()}
        walls = []
        got = None
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            got = sess.run(None, feed)[0]
            if i >= warmup:
                walls.append(time.perf_counter() - t0)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = runs[warmup:]
    per_run: list[dict[str, float]] = [{} for _ in runs]
    op_time: dict[str, float] = {}
    kernels: list[list[tuple[str, float, str | None]]] = [[] for _ in runs]
    for e in sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e["ts"]):
        if not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        for k, (a, b) in enumerate(runs):
            if a <= e["ts"] <= b:
                node = e["name"][: -len("_kernel_time")]
                kernels[k].append((e.get("args", {}).get("op_name", "?"), e["dur"] / 1e6, _stage_of_kernel(node, stages)))
                break
    for k, ks in enumerate(kernels):
        # nodes ORT inserted (layout reorders) join the stage of the next mapped kernel (else the previous)
        known = [st for _, _, st in ks]
        for i, (op, dur, st) in enumerate(ks):
            if st is None:
                st = next((s2 for s2 in known[i + 1 :] if s2), None) or next((s2 for s2 in reversed(known[:i]) if s2), OTHER)
            per_run[k][st] = per_run[k].get(st, 0.0) + dur
            op_time[op] = op_time.get(op, 0.0) + dur / len(runs)
    names = plan.names + sorted({s for r in per_run for s in r} - set(plan.names))
    med = {n: statistics.median([r.get(n, 0.0) for r in per_run]) for n in names}
    low = {n: min(r.get(n, 0.0) for r in per_run) for n in names}
    whole = statistics.median([(b - a) / 1e6 for a, b in runs])
    whole_min = min((b - a) / 1e6 for a, b in runs)
    med[OVERHEAD] = max(0.0, whole - sum(med.values()))
    low[OVERHEAD] = max(0.0, whole_min - sum(low.values()))
    return {
        "stages": med,
        "stages_min": low,
        "whole_s": whole,
        "whole_min_s": whole_min,
        "wall_s": statistics.median(walls),
        "stage_output_max_abs_vs_model": float(abs(got - ref).max()),
        "op_types_s": dict(sorted(op_time.items(), key=lambda kv: -kv[1])),
        "rounds": iters,
        "onnx_nodes": len(proto.graph.node),
    }


# --------------------------------------------------------------------------------------------
# the command's logic
# --------------------------------------------------------------------------------------------
def build_model(name: str, height: int, width: int, preset: str | None = None, seed: int = 0) -> nn.Module:
    """The generator configured for H x W as `asapbench run` does (random weights with a realistic spread)."""
    from asapbench.weights import realistic_model

    return realistic_model(name, height, width, preset, seed)


def run_profile(model: str, res: str, backend: str = "torch", precision: str = "fp32", preset: str | None = None,
                threads: int | None = None, iters: int = 3, warmup: int = 1, seed: int = 0,
                gemm_size: int = 2048, cast: str = "auto", input: str = "onehot",
                lowres_conv: str | None = None, pixelwise: str | None = None) -> dict[str, Any]:
    """Validate the arguments, profile, and return the JSON-able result (see the module docstring).
    ``lowres_conv``, ``pixelwise``: ASAP-Net's low-res conv form and pixelwise formulation (None: the model's
    default; UserError for other models)."""
    from asapbench.bounds import check_all
    from asapbench.registry import get_spec
    from asapbench.resolution import parse_resolution

    get_spec(model)  # UserError listing the models
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown or unsupported --precision {precision!r}; on the CPU choose: {', '.join(PRECISIONS)}")
    if precision == "bf16":
        from asapbench.bench import backends as B

        why = B.unsupported_reason(backend, "cpu", precision)
        if why:
            raise UserError(f"--precision bf16 --backend {backend}: {why}".replace("--backends torch", "--backend torch"))
    from asapbench.models.base import INPUT_MODES

    if input not in INPUT_MODES:
        raise UserError(f"unknown --input {input!r}; choose one of: {', '.join(INPUT_MODES)}")
    if cast not in CASTS:
        raise UserError(f"unknown --cast {cast!r}; choose one of: {', '.join(CASTS)}")
    if cast != "auto" and precision == "fp32":
        raise UserError(f"--cast {cast} applies to --precision bf16 only; drop --cast for fp32")
    from asapbench.registry import lowres_conv_choice, pixelwise_choice

    form = lowres_conv_choice(lowres_conv, [model])
    impl = pixelwise_choice(pixelwise, [model])
    h, w = parse_resolution(res)
    check_all(iters=iters, warmup=warmup, threads=threads, gemm_size=gemm_size, seed=seed)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        from asapbench.inputs import example_input

        m = build_model(model, h, w, preset, seed)
        if form is not None:
            m.lowres_conv = form  # an inference form of the same weights
        if impl is not None:
            m.pixelwise_impl = impl
        m.set_input_mode(input)  # after the weights were made realistic (on the one-hot input), as `run` does
        x = example_input(m, 1, h, w, seed=seed)
        macs = stage_macs(m, h, w)
        parity = None
        if precision != "fp32":
            m, x, parity = _cast_and_compare(m, x, precision, cast)
        nthreads = threads or torch.get_num_threads()

        def rate_(p: str) -> dict[str, Any]:  # the peak in the profiled backend's own library
            return gemm_rate(p, gemm_size, backend=backend, threads=nthreads)

        gemm = {precision: [rate_(precision)]}
        if backend == "torch":
            res_ = profile_torch(m, x, iters, warmup)
        else:
            res_ = profile_onnxruntime(m, x, iters, threads or torch.get_num_threads(), warmup)
        gemm[precision].append(rate_(precision))
        # a mixed cast computes some stages in fp32: their GFLOP/s are set beside the fp32 GEMM rate
        for p in set(res_.get("stage_dtypes", {}).values()) - {precision, None}:
            if p in GEMM_DTYPES:
                gemm[p] = [rate_(p), rate_(p)]
    finally:
        torch.set_num_threads(old_threads)
    rates = {p: statistics.median([g["gflops"] for g in runs]) for p, runs in gemm.items()}
    rate = rates[precision]
    total_macs = sum(macs.values())
    rows = []
    for name, sec in res_["stages"].items():
        mac = macs.get(name)
        stage_prec = res_.get("stage_dtypes", {}).get(name) or precision
        gf, frac = fraction_of_peak(mac, sec, rates.get(stage_prec, rate))
        rows.append({"stage": name, "ms": sec * 1e3, "min_ms": res_["stages_min"][name] * 1e3,
                     "share": sec / res_["whole_s"] if res_["whole_s"] else None, "precision": stage_prec,
                     "macs": mac, "gflops": gf, "fraction_of_gemm": frac})
    stage_sum = sum(res_["stages"].values())
    from asapbench.bench.system import cpu_isa, cpu_model, git_sha

    out = {
        "model": model,
        "preset": getattr(m, "preset", None),
        "config": getattr(m, "config", {}),
        "resolution": [h, w],
        "batch": 1,
        "backend": backend,
        "precision": precision,
        "device": "cpu",
        "threads": threads or old_threads,
        "iters": iters,
        "warmup": warmup,
        "gemm": {"op": gemm[precision][0]["op"], "library": gemm[precision][0]["library"], "gflops": rate,
                 "gflops_before": gemm[precision][0]["gflops"], "gflops_after": gemm[precision][1]["gflops"]},
        "cpu_isa": cpu_isa(),
        "stages": rows,
        "stage_sum_ms": stage_sum * 1e3,
        "stage_sum_min_ms": sum(res_["stages_min"].values()) * 1e3,
        "whole_ms": res_["whole_s"] * 1e3,
        "whole_min_ms": res_["whole_min_s"] * 1e3,
        "whole_macs": total_macs,
        "whole_gflops": 2 * total_macs / res_["whole_s"] / 1e9 if res_["whole_s"] else None,
        "stage_output_max_abs_vs_model": res_["stage_output_max_abs_vs_model"],
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "git_sha": git_sha(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
        "pixelwise_impl": getattr(m, "pixelwise_impl", None),
        "lowres_conv": getattr(m, "lowres_conv", None),  # whole_gflops counts direct-conv MACs either way
        "input": input,
    }
    if "fp32" in rates and precision != "fp32":
        out["gemm_fp32"] = {"op": gemm["fp32"][0]["op"], "gflops": rates["fp32"]}
    if parity is not None:
        out[f"{precision}_vs_fp32"] = parity
    if backend == "onnxruntime":
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
        out["wall_ms"] = res_["wall_s"] * 1e3
        out["op_types_ms"] = {k: v * 1e3 for k, v in res_["op_types_s"].items()}
        out["onnx_nodes"] = res_["onnx_nodes"]
        out["whole_time_source"] = "onnxruntime model_run event (median)"
    else:
        out["whole_time_source"] = "model(x), timed in the same rounds as the stages (median)"
    return out


#: ``--cast``: which reduced-precision form to profile (see :func:`asapbench.bench.runner_torch.cast_candidates`)
CASTS = ("auto", "whole", "mixed")


def _cast_and_compare(model: nn.Module, x: torch.Tensor, precision: str, cast: str = "auto") -> tuple[nn.Module, torch.Tensor, dict]:
    """``model`` and ``x`` in ``precision`` as the torch runner times them, and the output judged against the
    fp32 model's by the gate ``asapbench run`` applies (fp16 criteria).

    ``cast``: ``auto`` tries what ``run`` tries, in its order (the whole model, then the model's mixed
    variant) and profiles the first that passes, or the whole-model cast when none does; ``whole`` and
    ``mixed`` profile that one whatever its gate says. The record names the one profiled (``policy``) and
    every one judged (``tried``)."""
    from asapbench.bench.runner_torch import GATED, cast_candidates
    from exporters.validate import judge_outputs

    makers = cast_candidates(model, precision)
    if cast == "whole":
        makers = makers[:1]
    elif cast == "mixed":
        made = makers[1]() if len(makers) > 1 else None
        if made is None:
            raise UserError(f"--cast mixed: {getattr(model, 'model_name', '') or type(model).__name__} has no mixed "
                            f"{precision} variant (ASAP-Net has one); use --cast whole or auto")
        makers = [lambda: made]
    keep = ("passed", "psnr_db", "max_abs_err", "nonfinite", "criterion", "failures")
    with torch.inference_mode():
        ref = model(x).float().numpy()
    tried, first = [], None
    for make in makers:
        made = make()
        if made is None:
            continue
        what, m, in_dtype = made
        m.eval()
        xc = x.to(in_dtype) if x.is_floating_point() else x
        with torch.inference_mode():
            rec = judge_outputs(ref, m(xc).float().numpy(), GATED[precision])
        tried.append({"policy": what, **{k: rec[k] for k in keep}})
        if rec["passed"] or cast != "auto":
            return m, xc, {**tried[-1], "tried": tried}
        first = first or (m, xc)  # profiled when no form passes
    m, xc = first
    return m, xc, {**tried[0], "tried": tried}


def render_table(result: dict[str, Any]):
    """A rich Table of one profile result."""
    from rich.table import Table

    h, w = result["resolution"]
    prec = result["precision"]
    caption = None
    parity = result.get(f"{prec}_vs_fp32")
    if parity is not None:
        verdict = "meets" if parity["passed"] else "FAILS"
        caption = (f"{prec}: {parity['policy']}; output vs fp32: PSNR {parity['psnr_db']:.2f} dB, NaN/Inf "
                   f"{parity['nonfinite']} ({verdict} the `asapbench run` gate: {parity['criterion']})")
        others = [t for t in parity.get("tried", []) if t["policy"] != parity["policy"]]
        caption += "".join(f"; also judged: {t['policy']}, PSNR {t['psnr_db']:.2f} dB "
                           f"({'meets' if t['passed'] else 'fails'} the gate)" for t in others)
        if "gemm_fp32" in result:
            caption += f"; fp32 stages beside the fp32 GEMM rate, {result['gemm_fp32']['gflops']:.1f} GFLOP/s"
    labels = "label-map input, " if result.get("input") == "labels" else ""
    t = Table(title=f"{result['model']} ({result['preset']}) {h}x{w} {result['backend']} {prec}, {labels}"
                    f"{result['threads']} thread(s); peak: {result['gemm'].get('library', 'torch.mm')} {prec} "
                    f"{result['gemm']['gflops']:.1f} GFLOP/s", caption=caption)
    mixed = any(r.get("precision", prec) != prec for r in result["stages"])  # a mixed cast: say each stage's
    cols = ("stage", "in", "ms", "% of model", "GMACs", "GFLOP/s", "% of peak") if mixed else \
        ("stage", "ms", "% of model", "GMACs", "GFLOP/s", "% of peak")
    for col in cols:
        t.add_column(col, justify="left" if col in ("stage", "in") else "right")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def row(*cells):
        t.add_row(*(cells if mixed else cells[:1] + cells[2:]))

    for r in result["stages"]:
        row(r["stage"], r.get("precision") or "", fmt(r["ms"], ".2f"), fmt(r["share"] and 100 * r["share"], ".1f"),
            fmt(r["macs"] and r["macs"] / 1e9, ".3f"), fmt(r["gflops"], ".1f"),
            fmt(r["fraction_of_gemm"] and 100 * r["fraction_of_gemm"], ".0f"))
    t.add_section()
    row("sum of stages", "", f"{result['stage_sum_ms']:.2f}", f"{100 * result['stage_sum_ms'] / result['whole_ms']:.1f}",
        "", "", "")
    wg = result["whole_gflops"]
    row("whole model", "", f"{result['whole_ms']:.2f}", "100.0", f"{result['whole_macs'] / 1e9:.3f}",
        fmt(wg, ".1f"), fmt(wg and 100 * wg / result["gemm"]["gflops"], ".0f"))
    return t
