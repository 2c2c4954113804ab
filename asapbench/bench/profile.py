"""Per-stage time, MACs and achieved GFLOP/s of one generator on one backend (``asapbench profile``).

A model is cut into its main stages (:func:`stage_plan`): ASAP-Net = input encoding, low-res stream,
pixelwise stream; pix2pixHD = front, residual blocks, back (+ input pyramid and local enhancer);
SPADE = head, SPADE blocks, out; pix2pix U-Net = down path, up path. Any other generator is one
stage. For each stage the result gives its median time, its MACs (counted on the meta device as
:mod:`asapbench.counting` does, so the pixelwise stream counts the reference formulation's MACs) and
the achieved GFLOP/s beside the machine's GEMM rate for the precision (a ``torch.mm`` of
``gemm_size``^3 in that precision, measured in the same run, before and after). Times are medians over the rounds;
the JSON also has each one's minimum (``min_ms``), the better estimate on a busy machine.

- ``torch``: the stages run one after another as PyTorch calls timed with ``perf_counter``; every
  round also times the whole ``model(x)`` so the sum of the stages can be compared with it. The
  staged output is checked against ``model(x)``.
- ``onnxruntime``: the model is exported (fast pixelwise path, no parity gate) and run with
  ``SessionOptions.enable_profiling``; kernel times are grouped by stage through each node's module
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asapbench.errors import UserError

BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16")
GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OTHER = "(other)"
OVERHEAD = "(runtime overhead)"

StageFn = Callable[[Any], Any]


@dataclass
class StagePlan:
    """How one generator splits into stages.

    ``stages``: (name, fn) run in order on the input (each gets the previous stage's output);
    ``scopes``: module path -> stage for ONNX nodes (the deepest listed scope of a node wins);
    ``calls``: (source substring, stage) for nodes at the top level (functional code in forward).
    """

    stages: list[tuple[str, StageFn]]
    scopes: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.stages]


# --------------------------------------------------------------------------------------------
# stage plans per architecture
# --------------------------------------------------------------------------------------------
def _asapnet_plan(m) -> StagePlan:
    from asapbench.models.asapnet import tent_downsample

    if m.input_mode == "labels":
        return _asapnet_labels_plan(m)

    def encode(x):
        lr_in = x if m.pre_factor == 1 else tent_downsample(x, m.pre_factor, m.tent)
        return lr_in, (x[:, :-1] if m.lr_instance else x)

    def lowres(state):
        lr_in, hr = state
        return hr, m.lowres_stream(lr_in)

    def pixelwise(state):
        hr, params = state
        return m.pixelwise(hr, params)

    return StagePlan(
        [("input encoding", encode), ("low-res stream", lowres), ("pixelwise stream", pixelwise)],
        scopes={"lowres_stream": "low-res stream"},
        calls=[("self.lowres(", "input encoding"), ("hr_in =", "input encoding"), ("self.pixelwise(", "pixelwise stream")],
    )


def _asapnet_labels_plan(m) -> StagePlan:
    """ASAP-Net on the label map (``--input labels``): encoding = the in-graph one-hot and edge map (and the
    tent pre-downsampling); the pixelwise stream is :meth:`pixelwise_labels` (in onnxruntime its first layer's row
    lookup; in torch eager the one-hot product)."""
    from asapbench.models.asapnet import tent_downsample

    def encode(x):
        onehot = m.model_input(x)
        return (onehot if m.pre_factor == 1 else tent_downsample(onehot, m.pre_factor, m.tent)), (x, onehot)

    def lowres(state):
        lr_in, hr = state
        return hr, m.lowres_stream(lr_in)

    def pixelwise(state):
        (x, onehot), params = state
        return m.pixelwise_labels(x, onehot, params)

    return StagePlan(
        [("input encoding", encode), ("low-res stream", lowres), ("pixelwise stream", pixelwise)],
        scopes={"lowres_stream": "low-res stream"},
        calls=[("self.model_input(", "input encoding"), ("self.lowres(", "input encoding"),
               ("self.pixelwise_labels(", "pixelwise stream")],
    )


def _with_label_encoding(m, plan: StagePlan) -> StagePlan:
    """A baseline's plan in ``--input labels`` mode: a first stage that encodes the label map in the graph."""
    if getattr(m, "input_mode", "onehot") != "labels":
        return plan
    return StagePlan([("input encoding", m.model_input), *plan.stages], scopes=plan.scopes,
                     calls=[("self.model_input(", "input encoding"), *plan.calls])


def _seq_range(seq: nn.Sequential, lo: int, hi: int) -> StageFn:
    layers = list(seq)[lo:hi]

    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    return run


def _global_split(seq: nn.Sequential) -> tuple[int, int]:
    from baselines.pix2pixhd import ResnetBlock

    idx = [i for i, layer in enumerate(seq) if isinstance(layer, ResnetBlock)]
    return (idx[0], idx[-1] + 1) if idx else (len(seq), len(seq))


def _pix2pixhd_global_plan(m) -> StagePlan:
    i0, i1 = _global_split(m.model)
    scopes = {f"model.{i}": ("front" if i < i0 else "residual blocks" if i < i1 else "back") for i in range(len(m.model))}
    return StagePlan(
        [("front", _seq_range(m.model, 0, i0)), ("residual blocks", _seq_range(m.model, i0, i1)),
         ("back", _seq_range(m.model, i1, len(m.model)))],
        scopes=scopes,
    )


def _pix2pixhd_local_plan(m) -> StagePlan:
    i0, i1 = _global_split(m.model)
    n_loc = m.n_local_enhancers

    def pyramid(x):
        pyr = [x]
        for _ in range(n_loc):
            pyr.append(m.downsample(pyr[-1]))
        return pyr, pyr[-1]

    def seg(lo, hi):
        f = _seq_range(m.model, lo, hi)
        return lambda state: (state[0], f(state[1]))

    def local(state):
        pyr, y = state
        for n in range(1, n_loc + 1):
            y = getattr(m, f"model{n}_2")(getattr(m, f"model{n}_1")(pyr[n_loc - n]) + y)
        return y

    scopes = {f"model.{i}": ("front" if i < i0 else "residual blocks" if i < i1 else "back") for i in range(len(m.model))}
    for n in range(1, n_loc + 1):
        scopes[f"model{n}_1"] = scopes[f"model{n}_2"] = "local enhancer"
    return StagePlan(
        [("input pyramid", pyramid), ("front", seg(0, i0)), ("residual blocks", seg(i0, i1)),
         ("back", seg(i1, len(m.model))), ("local enhancer", local)],
        scopes=scopes,
        calls=[("self.downsample(", "input pyramid"), ('f"model{n}_2"', "local enhancer")],
    )


def _spade_plan(m) -> StagePlan:
    names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
    if m.num_upsampling_layers == "most":
        names.append("up_4")

    def head(x):
        sh, sw = m.latent_size(int(x.shape[2]), int(x.shape[3]))
        return x, m.fc(F.interpolate(x, size=(sh, sw), mode="nearest"))

    def blocks(state):  # the same sequence as SPADEGenerator.forward
        seg, h = state
        h = m.head_0(h, seg)
        h = m.G_middle_0(m._up(h), seg)
        if m.num_upsampling_layers in ("more", "most"):
            h = m._up(h)
        h = m.G_middle_1(h, seg)
        for name in names[3:]:
            h = getattr(m, name)(m._up(h), seg)
        return h

    def out(h):
        return torch.tanh(m.conv_img(F.leaky_relu(h, 0.2)))

    scopes = {"fc": "head", "conv_img": "out", **{n: "SPADE blocks" for n in names}}
    return StagePlan(
        [("head", head), ("SPADE blocks", blocks), ("out", out)],
        scopes=scopes,
        calls=[("self.fc(", "head"), ("self.latent_size(", "head"), ("self._up(", "SPADE blocks"),
               ("self.G_middle_", "SPADE blocks"), ("self.up_", "SPADE blocks"), ("self.conv_img(", "out")],
    )


def _unet_plan(m) -> StagePlan:
    from baselines.pix2pix import UnetSkipConnectionBlock

    blocks, paths = [], []
    b, path = m.model, "model"
    while b is not None:
        blocks.append(b)
        paths.append(path)
        inner = [(i, c) for i, c in enumerate(b.model) if isinstance(c, UnetSkipConnectionBlock)]
        b, path = (inner[0][1], f"{path}.model.{inner[0][0]}") if inner else (None, None)
    splits = []
    scopes: dict[str, str] = {}
    for blk, pth in zip(blocks, paths):
        layers = list(blk.model)
        sub = [i for i, c in enumerate(layers) if isinstance(c, UnetSkipConnectionBlock)]
        if sub:
            lo, hi = sub[0], sub[0] + 1
        else:  # innermost: split after the down convolution
            lo = hi = next(i for i, c in enumerate(layers) if isinstance(c, nn.Conv2d)) + 1
        splits.append((layers[:lo], layers[hi:]))
        scopes[pth] = "up path"  # the skip concatenation of the block
        for i in range(len(layers)):
            if i < lo or i >= hi:
                scopes[f"{pth}.model.{i}"] = "down path" if i < lo else "up path"

    def down(x):
        ins = [x]
        for dn, _ in splits:
            y = ins[-1]
            for layer in dn:
                y = layer(y)
            ins.append(y)
        return ins

    def up(ins):
        y = ins[-1]
        for k in range(len(blocks) - 1, -1, -1):
            for layer in splits[k][1]:
                y = layer(y)
            if not blocks[k].outermost:
                y = torch.cat([ins[k], y], 1)
        return y

    return StagePlan([("down path", down), ("up path", up)], scopes=scopes)


def stage_plan(model: nn.Module) -> StagePlan:
    """The stages of ``model`` (by architecture); an unknown generator is one stage ``model``."""
    from asapbench.models.asapnet import ASAPNetGenerator

    if isinstance(model, ASAPNetGenerator):
        return _asapnet_plan(model)
    try:
        from baselines.pix2pix import UnetGenerator
        from baselines.pix2pixhd import Pix2PixHDGlobal, Pix2PixHDLocal
        from baselines.spade import SPADEGenerator
    except ImportError:  # pragma: no cover
        return StagePlan([("model", model)])
    if isinstance(model, Pix2PixHDGlobal):
        return _with_label_encoding(model, _pix2pixhd_global_plan(model))
    if isinstance(model, Pix2PixHDLocal):
        return _with_label_encoding(model, _pix2pixhd_local_plan(model))
    if isinstance(model, SPADEGenerator):
        return _with_label_encoding(model, _spade_plan(model))
    if isinstance(model, UnetGenerator):
        return _with_label_encoding(model, _unet_plan(model))
    return StagePlan([("model", model)])


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


def gemm_rate(precision: str = "fp32", n: int = 2048, repeats: int = 3) -> dict[str, Any]:
    """The machine's GEMM rate: median GFLOP/s of ``torch.mm`` on two ``n x n`` matrices of ``precision``."""
    dtype = GEMM_DTYPES[precision]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"op": f"torch.mm {n}x{n} @ {n}x{n} {precision}", "n": n, "seconds": med, "gflops": 2 * n**3 / med / 1e9}


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

    ort = require("onnxruntime", extra="ort", why="for --backend onnxruntime")
    from exporters.onnx_export import torch_to_onnx

    plan = stage_plan(model)
    with torch.no_grad():
        proto = torch_to_onnx(model, x)
        ref = model(x).numpy()
    stages = node_stages(proto, plan)
    with tempfile.TemporaryDirectory(prefix="asapbench-profile-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
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
                gemm_size: int = 2048, cast: str = "auto", input: str = "onehot") -> dict[str, Any]:
    """Validate the arguments, profile, and return the JSON-able result (see the module docstring)."""
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
    h, w = parse_resolution(res)
    if iters < 1:
        raise UserError(f"--iters must be at least 1, got {iters}")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if gemm_size < 16:
        raise UserError(f"--gemm-size must be at least 16, got {gemm_size}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        from asapbench.inputs import example_input

        m = build_model(model, h, w, preset, seed)
        m.set_input_mode(input)  # after the weights were made realistic (on the one-hot input), as `run` does
        x = example_input(m, 1, h, w, seed=seed)
        macs = stage_macs(m, h, w)
        parity = None
        if precision != "fp32":
            m, x, parity = _cast_and_compare(m, x, precision, cast)
        gemm = {precision: [gemm_rate(precision, gemm_size)]}
        if backend == "torch":
            res_ = profile_torch(m, x, iters, warmup)
        else:
            res_ = profile_onnxruntime(m, x, iters, threads or torch.get_num_threads(), warmup)
        gemm[precision].append(gemm_rate(precision, gemm_size))
        # a mixed cast computes some stages in fp32: their GFLOP/s are set beside the fp32 GEMM rate
        for p in set(res_.get("stage_dtypes", {}).values()) - {precision, None}:
            if p in GEMM_DTYPES:
                gemm[p] = [gemm_rate(p, gemm_size), gemm_rate(p, gemm_size)]
    finally:
        torch.set_num_threads(old_threads)
    rates = {p: statistics.median([g["gflops"] for g in runs]) for p, runs in gemm.items()}
    rate = rates[precision]
    total_macs = sum(macs.values())
    rows = []
    for name, sec in res_["stages"].items():
        mac = macs.get(name)
        stage_prec = res_.get("stage_dtypes", {}).get(name) or precision
        gf = 2 * mac / sec / 1e9 if mac and sec > 0 else None
        r = rates.get(stage_prec, rate)
        rows.append({"stage": name, "ms": sec * 1e3, "min_ms": res_["stages_min"][name] * 1e3,
                     "share": sec / res_["whole_s"] if res_["whole_s"] else None, "precision": stage_prec,
                     "macs": mac, "gflops": gf, "fraction_of_gemm": gf / r if gf else None})
    stage_sum = sum(res_["stages"].values())
    from asapbench.bench.system import cpu_model, git_sha

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
        "gemm": {"op": gemm[precision][0]["op"], "gflops": rate, "gflops_before": gemm[precision][0]["gflops"],
                 "gflops_after": gemm[precision][1]["gflops"]},
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
                    f"{result['threads']} thread(s); GEMM ({prec}) {result['gemm']['gflops']:.1f} GFLOP/s", caption=caption)
    mixed = any(r.get("precision", prec) != prec for r in result["stages"])  # a mixed cast: say each stage's
    cols = ("stage", "in", "ms", "% of model", "GMACs", "GFLOP/s", "% of GEMM") if mixed else \
        ("stage", "ms", "% of model", "GMACs", "GFLOP/s", "% of GEMM")
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
