"""Parity gate: an exported model must compute what the PyTorch fp32 model computes.

What is compared: the generator's output ``image`` ([N, 3, H, W], in [-1, 1]) from onnxruntime
(CPU execution provider here) against the PyTorch fp32 forward of the same module on the CPU, on
realistic label maps: the project's synthetic label maps (random blobs of classes with instance
ids, :func:`asapbench.inputs.random_label_map`), and first the user's own label maps when
``--parity-labels DIR`` names a folder of them; one input instead of two above
``LARGE_INPUT_PIXELS`` (a CPU forward of SPADE at 1024x1024 is 2.3 TMACs). See docs/export.md.

The gate runs the graph with its InstanceNormalization nodes evaluated exactly (float64, two-pass;
:func:`exact_instancenorm`): onnxruntime's CPU kernel for that one op loses precision on large
images (7.6e-3 at the output of a full ASAP-Net at 256x512, PyTorch itself is within 8e-5 of a
float64 forward), which says nothing about the export. The unmodified file as onnxruntime runs it
is measured too (inputs up to ``LARGE_INPUT_PIXELS``) and reported under ``as_is``.

Criteria (``PARITY_CRITERIA``): fp32 -- max |error| <= 1e-4 against PyTorch fp32, or else onnxruntime's
error against a float64 forward at most 4x PyTorch fp32's own (+1e-4); fp16 -- PSNR >= 40 dB with the
peak-to-peak range of the output (2.0, for [-1, 1]) as the peak, and no NaN/Inf. Every sample also
reports the spread of the reference output (std, fraction of saturated pixels |y| > 0.98): a random
generator whose tanh output is saturated or collapsed to 0 would pass any gate, so such a result is
flagged ``degenerate`` (and :func:`asapbench.weights.spread_random_weights` fixes random weights); a
reference with NaN/Inf values or one value everywhere (:func:`asapbench.outputs.output_problem`) fails
the gate.

fp16 graphs are checked through :func:`exporters.fp16.emulate_fp16`: every value the graph holds in
fp16 is rounded to fp16, the arithmetic inside a node runs in fp32 (as GPU fp16 kernels accumulate).
Running the fp16 file directly on onnxruntime's CPU provider would be a weak proxy: it has no fp16
kernel for most ops and computes chains of them in fp32 without rounding, which hides overflow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asapbench.errors import UserError, require
from asapbench.outputs import output_problem
from exporters.ort import make_session

#: fp32: onnxruntime's error against a float64 forward of the same model and input may be at most
#: ``drift_factor`` times PyTorch fp32's own error against it, plus ``max_abs_err``. When onnxruntime is
#: within ``max_abs_err`` of PyTorch fp32 that holds whatever the drift (triangle inequality), so the
#: float64 forward only runs when it is needed (docs/export.md, "Parity gate"). fp16: PSNR and no NaN/Inf.
PARITY_CRITERIA = {
    "fp32": {"max_abs_err": 1e-4, "drift_factor": 4.0},
    "fp16": {"psnr_db": 40.0, "nonfinite": 0},
}
#: peak-to-peak range of a [-1, 1] output: the "peak" in PSNR
PEAK_TO_PEAK = 2.0
SATURATION = 0.98
#: a reference output with less spread than this (or more saturated pixels than MAX_SATURATED) is degenerate
MIN_OUTPUT_STD = 0.05
MAX_SATURATED = 0.5
#: above this many pixels per input the gate uses one input (a real Cityscapes scene when present) not two
LARGE_INPUT_PIXELS = 512 * 1024


class ParityError(UserError):
    """The exported model does not match PyTorch within the gate; the message carries the numbers."""


def parity_inputs(model, height: int, width: int, batch: int = 1, seed: int = 0, count: int = 2,
                  label_dir: str | Path | None = None) -> list[tuple[str, torch.Tensor]]:
    """Realistic inputs for ``model`` at H x W: label maps from ``label_dir`` first when given, then the
    project's synthetic label maps (:func:`asapbench.inputs.random_label_map`, a Voronoi partition of
    random classes with instance ids).

    Returns ``count`` pairs (description, float32 CPU tensor ``[batch, input_nc, H, W]``).
    """
    from asapbench.inputs import example_input, input_from_label_maps

    out: list[tuple[str, torch.Tensor]] = []
    if label_dir is not None:
        out.append(input_from_label_maps(model, label_dir, batch, height, width, index=seed))
    k = 0
    while len(out) < count:
        s = seed + 1000 * (k + 1)
        out.append((f"random label blobs (asapbench.inputs.random_label_map, seed {s})", example_input(model, batch, height, width, seed=s)))
        k += 1
    return out[:count]


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Error metrics of ``got`` against the reference output ``ref`` (both float arrays, same shape)."""
    if ref.shape != got.shape:
        raise ParityError(
            f"exported model returned shape {list(got.shape)}, PyTorch {list(ref.shape)}: the graph does not follow "
            "the input size (a size was fixed at export); export fixed resolutions instead of --dynamic"
        )
    got = got.astype(np.float64)
    ref = ref.astype(np.float64)
    nonfinite = int(np.count_nonzero(~np.isfinite(got)))
    diff = np.where(np.isfinite(got), got - ref, np.inf)
    absd = np.abs(diff)
    mse = float(np.mean(np.square(diff))) if nonfinite == 0 else float("inf")
    psnr = 10 * math.log10(PEAK_TO_PEAK**2 / max(mse, 1e-30)) if math.isfinite(mse) else -1.0
    return {
        "max_abs_err": float(absd.max()) if nonfinite == 0 else None,
        "mean_abs_err": float(absd.mean()) if nonfinite == 0 else None,
        "psnr_db": round(psnr, 3),
        "nonfinite": nonfinite,
        "output_std": float(ref.std()),
        "output_range": [float(ref.min()), float(ref.max())],
        "saturated_fraction": float(np.mean(np.abs(ref) > SATURATION)),
        "reference_problem": output_problem(ref),  # NaN/Inf or constant: the gate fails
    }


def drift_bound(torch_vs_float64: float) -> float:
    """The largest error against float64 an fp32 export may have, given PyTorch fp32's own error."""
    crit = PARITY_CRITERIA["fp32"]
    return crit["drift_factor"] * torch_vs_float64 + crit["max_abs_err"]


def _gate(precision: str, worst: dict[str, Any]) -> list[str]:
    """The failed criteria, as short phrases (empty: passed)."""
    crit = PARITY_CRITERIA[precision]
    fails = []
    if worst.get("reference_problem"):  # any output matches a broken reference as well as none
        fails.append(f"degenerate PyTorch reference: {worst['reference_problem']}")
    if worst["nonfinite"] > crit.get("nonfinite", 0):
        fails.append(f"{worst['nonfinite']} NaN/Inf values")
    if "max_abs_err" in crit and worst["max_abs_err"] is not None and worst["max_abs_err"] > crit["max_abs_err"]:
        drift = worst.get("drift")
        if drift is None:
            fails.append(f"max |error| {worst['max_abs_err']:.3g} > {crit['max_abs_err']:g}")
        elif drift["onnx_vs_float64"] > drift["bound"]:
            fails.append(f"max |onnx - float64| {drift['onnx_vs_float64']:.3g} > {crit['drift_factor']:g} x "
                         f"max |torch fp32 - float64| ({drift['torch_vs_float64']:.3g}) + {crit['max_abs_err']:g}")
    if "psnr_db" in crit and worst["psnr_db"] < crit["psnr_db"]:
        fails.append(f"PSNR {worst['psnr_db']:.2f} dB < {crit['psnr_db']:g} dB")
    return fails


def exact_instancenorm(model, copy: bool = True) -> tuple[Any, int]:
    """A copy of ``model`` whose InstanceNormalization nodes are evaluated exactly, and how many.

    onnxruntime's CPU InstanceNormalization kernel loses precision over large images (its error
    grows with H*W and with mean/std of a channel: 3.7e-4 on a 256x512 map with mean/std 300, where
    PyTorch's fp32 kernel stays at 1.3e-5). On a full ASAP-Net that alone exceeds the 1e-4 gate
    (7.6e-3 at the output), although the exported graph is right. The copy computes each
    InstanceNormalization as the ONNX spec defines it -- (x - mean) / sqrt(var + eps) * scale + B over
    H, W -- in float64 (two-pass), so the gate measures the export rather than that kernel.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:  # edit in place
        out = model
    g = out.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in list(g.value_info) + list(g.input)
             if vi.type.tensor_type.HasField("shape")}
    nodes, count = [], 0
    added: set[str] = set()

    def const(name: str, arr: np.ndarray) -> str:
        if name not in added:
            g.initializer.append(numpy_helper.from_array(arr, name))
            added.add(name)
        return name

    for n in g.node:
        if n.op_type != "InstanceNormalization":
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        x, scale, bias = n.input
        rank = ranks.get(x, 4)
        p = f"__exact_in{count}_"
        axes = const(f"__exact_in_axes{rank}", np.arange(2, rank, dtype=np.int64))
        bshape = const(f"__exact_in_bshape{rank}", np.arange(1, rank - 1, dtype=np.int64))
        e = const(f"{p}eps", np.array(eps, dtype=np.float64))
        nodes += [
            helper.make_node("Cast", [x], [p + "x"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceMean", [p + "x", axes], [p + "mean"], keepdims=1),
            helper.make_node("Sub", [p + "x", p + "mean"], [p + "d"]),
            helper.make_node("Mul", [p + "d", p + "d"], [p + "d2"]),
            helper.make_node("ReduceMean", [p + "d2", axes], [p + "var"], keepdims=1),
            helper.make_node("Add", [p + "var", e], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Div", [p + "d", p + "std"], [p + "norm64"]),
            helper.make_node("Cast", [p + "norm64"], [p + "norm"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [scale, bshape], [p + "scale"]),
            helper.make_node("Unsqueeze", [bias, bshape], [p + "bias"]),
            helper.make_node("Mul", [p + "norm", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], [n.output[0]]),
        ]
        count += 1
    del g.node[:]
    g.node.extend(nodes)
    return out, count


def _gate_session(onnx_path: str | Path, precision: str, exact_norm: bool, lean: bool = False):
    """(session the gate runs, number of InstanceNormalization nodes made exact).

    ``lean``: run the graph one node at a time (:class:`exporters.node_eval.NodeByNodeSession`), holding
    only the values still needed -- for inputs above ``LARGE_INPUT_PIXELS``, where a whole-graph session
    holds several times the graph's live set (docs/export.md, "Cost and memory").
    """
    import onnx

    from exporters.fp16 import emulate_fp16
    from exporters.node_eval import NodeByNodeSession

    emulated = precision == "fp16"
    if not (exact_norm or emulated or lean):
        return make_session(str(onnx_path), arena=False), 0
    proto = onnx.load(str(onnx_path))
    if emulated:
        proto = emulate_fp16(proto, copy=False)
    n_exact = 0
    if exact_norm and any(n.op_type == "InstanceNormalization" for n in proto.graph.node):
        proto, n_exact = exact_instancenorm(proto, copy=False)
    if lean:
        return NodeByNodeSession(proto, optimize=not emulated), n_exact
    if not emulated and not n_exact:
        return make_session(str(onnx_path), arena=False), 0
    return make_session(proto, arena=False, optimize="none" if emulated else "all"), n_exact


def float64_drift(model: torch.nn.Module, x: torch.Tensor, ref32: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Errors of PyTorch fp32 (``ref32``) and of the export (``got``) against a float64 forward of a copy
    of ``model`` on ``x``, and the bound the export must meet (:func:`drift_bound`)."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    with torch.inference_mode():
        ref64 = twin(x.double()).numpy()
    del twin
    torch_err = float(np.abs(ref32.astype(np.float64) - ref64).max())
    onnx_err = float(np.abs(got.astype(np.float64) - ref64).max()) if np.isfinite(got).all() else float("inf")
    return {"torch_vs_float64": torch_err, "onnx_vs_float64": onnx_err, "bound": drift_bound(torch_err)}


def _worst(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def most(key: str):
        vals = [s[key] for s in samples]
        return None if any(v is None for v in vals) else max(vals)

    drifts = [s["drift"] for s in samples if s.get("drift")]
    return {
        "max_abs_err": most("max_abs_err"),
        "mean_abs_err": most("mean_abs_err"),
        "psnr_db": min(s["psnr_db"] for s in samples),
        "nonfinite": sum(s["nonfinite"] for s in samples),
        "output_std": min(s["output_std"] for s in samples),
        "saturated_fraction": max(s["saturated_fraction"] for s in samples),
        "reference_problem": next((s["reference_problem"] for s in samples if s.get("reference_problem")), ""),
        # the sample that comes closest to (or goes furthest past) its bound
        "drift": max(drifts, key=lambda d: d["onnx_vs_float64"] / d["bound"]) if drifts else None,
    }


def check_parity(
    onnx_path: str | Path,
    model: torch.nn.Module,
    inputs: list[tuple[str, torch.Tensor]],
    precision: str,
    input_name: str = "label",
    progress: Callable[[str], None] | None = None,
    exact_norm: bool = True,
) -> dict[str, Any]:
    """Run ``onnx_path`` in onnxruntime (CPU) and PyTorch on ``inputs``; return the parity record.

    With ``exact_norm`` (default) the gate runs the graph with InstanceNormalization evaluated
    exactly (:func:`exact_instancenorm`). fp32: an export within ``max_abs_err`` of PyTorch fp32 passes;
    one further away is judged against a float64 forward (:func:`float64_drift`), which is recorded per
    sample under ``drift``. The file as onnxruntime's CPU kernels run it is also measured on the first
    input when it is at most ``LARGE_INPUT_PIXELS`` (``as_is``). Cost: one PyTorch forward and one
    onnxruntime run per input (plus the float64 forward where needed). It never raises on a failed gate:
    see :func:`raise_if_failed`.
    """
    ort = require("onnxruntime", why="to check exported graphs")
    t0 = time.perf_counter()
    say = progress or (lambda s: None)
    emulated = precision == "fp16"
    lean = max(x[0, 0].numel() for _, x in inputs) > LARGE_INPUT_PIXELS
    gate_sess, n_exact = _gate_session(onnx_path, precision, exact_norm, lean=lean)
    samples: list[dict[str, Any]] = []
    as_is_inputs = []
    for desc, x in inputs:
        say(f"parity: {desc.split(' (')[0]}")
        t = time.perf_counter()
        with torch.inference_mode():
            ref = model(x).float().numpy()
        t_torch = time.perf_counter() - t
        got = gate_sess.run(None, {input_name: x.numpy()})[0]
        t_ort = time.perf_counter() - t - t_torch
        rec = {"input": desc, "shape": list(x.shape), **compare(ref, got), "drift": None,
               "seconds": {"torch": round(t_torch, 3), "onnxruntime": round(t_ort, 3)}}
        if lean:  # what the node-by-node run held at most (values only; weights and runtime not counted)
            rec["onnxruntime_peak_live_mib"] = round(gate_sess.peak_live_bytes / 2**20, 1)
        if precision == "fp32" and rec["max_abs_err"] is not None and rec["max_abs_err"] > PARITY_CRITERIA["fp32"]["max_abs_err"]:
            say(f"parity: float64 reference ({desc.split(' (')[0]})")
            t = time.perf_counter()
            rec["drift"] = float64_drift(model, x, ref, got)
            rec["seconds"]["float64"] = round(time.perf_counter() - t, 3)
        samples.append(rec)
        if not as_is_inputs and (n_exact or emulated) and x[0, 0].numel() <= LARGE_INPUT_PIXELS:
            as_is_inputs.append((desc, x, ref))
        del got
    runtime = f"onnxruntime {ort.__version__} {gate_sess.get_providers()[0]}"
    del gate_sess
    as_is = None
    for desc, x, ref in as_is_inputs:
        r = compare(ref, make_session(str(onnx_path), arena=False).run(None, {input_name: x.numpy()})[0])
        as_is = {"input": desc, **{k: r[k] for k in ("max_abs_err", "mean_abs_err", "psnr_db", "nonfinite")}}
    worst = _worst(samples)
    fails = _gate(precision, worst)
    degenerate = _degenerate(worst)
    if emulated:
        runtime += ("; fp16 emulated: every fp16 value rounded to fp16 explicitly, arithmetic in fp32 "
                    "(exporters.fp16.emulate_fp16)")
    if lean:
        runtime += "; run node by node (exporters.node_eval), holding only the values still needed"
    if n_exact:
        runtime += f"; its {n_exact} InstanceNormalization nodes evaluated exactly (float64, two-pass: exact_instancenorm)"
    return {
        "passed": not fails,
        "failures": fails,
        "precision": precision,
        "criterion": _criterion_text(precision),
        "reference": f"PyTorch {torch.__version__} fp32 forward on the CPU",
        "runtime": runtime,
        **worst,
        "degenerate": degenerate,
        "as_is": as_is,
        "note": _notes(degenerate, as_is, bool(n_exact or emulated)),
        "samples": samples,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _criterion_text(precision: str) -> str:
    crit = PARITY_CRITERIA[precision]
    if precision == "fp32":
        return (f"max |onnx - torch| <= {crit['max_abs_err']:g} on the [-1, 1] output, or else max |onnx - float64| <= "
                f"{crit['drift_factor']:g} x max |torch fp32 - float64| + {crit['max_abs_err']:g} (same model and input)")
    return f"PSNR >= {crit['psnr_db']:g} dB (peak-to-peak {PEAK_TO_PEAK:g}) and no NaN/Inf"


def _notes(degenerate: bool, as_is: dict | None, modified: bool) -> str:
    notes = []
    if degenerate:
        notes.append("reference output is nearly constant or saturated: the comparison says little; "
                     "use trained weights or asapbench.weights.spread_random_weights")
    if as_is is not None:
        notes.append("as_is: the unmodified file as onnxruntime's CPU provider runs it (its InstanceNormalization "
                     "kernel loses precision on large images; it computes most fp16 ops in fp32 without rounding "
                     "in between); first input only")
    elif modified:
        notes.append(f"as_is not measured: inputs above {LARGE_INPUT_PIXELS} pixels (it would cost a second "
                     "onnxruntime run)")
    return " ".join(notes)


def raise_if_failed(parity: dict[str, Any], what: str) -> None:
    """Raise :class:`ParityError` with the numbers when the parity record did not pass."""
    if parity["passed"]:
        return
    nums = f"max |err| {parity['max_abs_err']}, PSNR {parity['psnr_db']} dB, NaN/Inf {parity['nonfinite']}"
    if parity.get("drift"):
        d = parity["drift"]
        nums += f", |onnx - float64| {d['onnx_vs_float64']:.3g}, |torch fp32 - float64| {d['torch_vs_float64']:.3g}"
    raise ParityError(
        f"parity check failed for {what}: {'; '.join(parity['failures'])} ({nums}; criterion: {parity['criterion']}); "
        "the numbers are in the .parity-failed.json report beside it; export with --precision fp32 or report a bug"
    )


def judge_outputs(ref: np.ndarray, got: np.ndarray, precision: str = "fp16") -> dict[str, Any]:
    """One output ``got`` against its fp32 reference ``ref`` by the gate's criteria for ``precision``
    (``PARITY_CRITERIA``; no export involved): :func:`compare`'s metrics plus ``passed``, ``failures``,
    ``criterion`` and ``degenerate``. The torch bf16 cells on the CPU are judged by the fp16 criteria."""
    rec = {**compare(ref, got), "drift": None}
    fails = _gate(precision, rec)
    return {**rec, "passed": not fails, "failures": fails, "criterion": _criterion_text(precision),
            "degenerate": _degenerate(rec)}


def _degenerate(rec: dict[str, Any]) -> bool:
    """Whether a reference output is too flat or too saturated for its comparison to mean much."""
    return (bool(rec.get("reference_problem")) or rec["output_std"] < MIN_OUTPUT_STD
            or rec["saturated_fraction"] > MAX_SATURATED)
