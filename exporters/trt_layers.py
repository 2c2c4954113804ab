"""Layer precisions of a built TensorRT engine, read from the builder's own layer information (no GPU
needed): each built layer's category and precision, counts and their text (see :mod:`exporters.trt`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

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
