"""fp32 -> fp16 conversion of an ONNX graph with fp32 inputs and outputs, numerically safe.

Our own pass over the graph (no extra dependency): every node runs in fp16 except

- ops that are unsafe in half precision (:data:`KEEP_FP32_OPS`: InstanceNormalization, whose
  variance overflows or loses all precision in fp16 -- onnxruntime#10079, TensorRT#2691 --,
  reductions, pow/sqrt/exp/log, softmax and normalisations), and
- with a calibration input: every node one of whose float inputs or outputs exceeds
  ``max_abs`` in magnitude (default 8192, an eighth of the fp16 maximum 65504) on that input.

Cast nodes are inserted wherever a value crosses between an fp32 and an fp16 node; graph inputs and
outputs stay fp32, so the converted model is a drop-in replacement (and builds as a strongly typed
TensorRT network whose precision comes from the graph, see docs/export.md, "fp16 conversion" and "TensorRT engines").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from exporters.node_eval import NodeByNodeSession
from exporters.onnx_types import FLOAT, FLOAT16, value_types

#: ops that stay in fp32 wherever they occur
KEEP_FP32_OPS = frozenset({
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LpNormalization",
    "MeanVarianceNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Softmax", "LogSoftmax",
    "Range", "ConstantOfShape", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "EyeLike", "Cast", "CastLike", "Shape", "Size",
    # control flow: subgraphs are not converted
    "If", "Loop", "Scan",
})

#: (op_type, input index) that must stay float32 even inside an fp16 node
KEEP_FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})

FP16_MAX = 65504.0
DEFAULT_MAX_ABS = 8192.0

def activation_ranges(model, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Largest |value| of every float intermediate of ``model`` over the input ``feeds``.

    Runs the graph in onnxruntime (CPU) one node at a time (:class:`exporters.node_eval.NodeByNodeSession`)
    and reads each float value's max and min the moment it exists, so memory stays at the graph's live
    set: a copy of the graph with a ``ReduceMax``/``ReduceMin`` output per value, run as one session, held
    2.2x an ordinary inference (SPADE at 1024 x 1024: 11.6 GB against 5.3; out of memory at 2048 x 2048).
    NaN/Inf come back as ``inf``.
    """

    sess = NodeByNodeSession(model)
    ranges: dict[str, float] = {}

    def note(name: str, arr: np.ndarray) -> None:
        if arr.dtype != np.float32 or arr.size == 0:  # float values only (a FLOAT value is a float32 array)
            return
        # max and min, not max(|x|): no full-size temporary
        v = max(abs(float(arr.max())), abs(float(arr.min())))
        ranges[name] = max(ranges.get(name, 0.0), v if np.isfinite(v) else float("inf"))

    for feed in feeds:
        sess.run(None, dict(feed), on_value=note)
    return ranges


def convert_to_fp16(
    model,
    ranges: Mapping[str, float] | None = None,
    max_abs: float = DEFAULT_MAX_ABS,
    keep_fp32_ops: Iterable[str] = KEEP_FP32_OPS,
) -> tuple[Any, dict[str, Any]]:
    """Return (fp16 ModelProto with fp32 I/O, report) for an fp32 ONNX ``model`` (not modified).

    ``ranges`` (from :func:`activation_ranges`) keeps nodes whose float inputs/outputs exceed
    ``max_abs`` in fp32. The report counts fp16/fp32 nodes, kept ops and inserted casts.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    p = _Fp16Pass(out, ranges, max_abs, frozenset(keep_fp32_ops))
    p.known_ranges()
    p.choose_nodes()
    p.wanted_types()
    p.convert_initializers()
    p.rename_outputs()
    p.insert_casts()
    p.retype_value_info()
    p.report.update(
        nodes_fp16=sum(p.low),
        nodes_fp32=len(p.low) - sum(p.low),
        kept_fp32=dict(sorted(p.reasons.items())),
        max_abs=max_abs,
    )
    return out, p.report


def _const_value(n):
    for a in n.attribute:
        if a.name == "value":
            return a
    return None


def _type_neutral_input(n, idx: int) -> bool:
    """Inputs that are taken as they come (Cast converts anything)."""
    return n.op_type in ("Cast", "CastLike") and idx == 0


class _Fp16Pass:
    """What the steps of one :func:`convert_to_fp16` share: the graph (edited in place), the value types and
    ranges, which nodes compute in fp16, which values are wanted in which type, and the report."""

    def __init__(self, out, ranges: Mapping[str, float] | None, max_abs: float, keep_ops: frozenset[str]):
        self.g = out.graph
        self.types = value_types(out)
        self.ranges = dict(ranges or {})
        self.max_abs = max_abs
        self.keep_ops = keep_ops
        self.inits = {i.name: i for i in self.g.initializer}
        self.report: dict[str, Any] = {"casts": 0, "initializers_fp16": 0, "initializers_duplicated": 0,
                                       "clipped_values": 0}
        self.reasons: Counter = Counter()
        self.low: list[bool] = []
        self.need16: set[str] = set()
        self.need32: set[str] = set()
        self.produced16: set[str] = set()
        self.alias16: dict[str, str] = {}  # value -> name of its fp16 version
        self.alias32: dict[str, str] = {}  # fp16 value -> name of its fp32 version
        self.private: dict[str, str] = {}  # graph output computed in fp16 -> the private name its producer writes

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == FLOAT

    def to16(self, arr: np.ndarray) -> np.ndarray:
        self.report["clipped_values"] += int(np.count_nonzero((np.abs(arr) > FP16_MAX) & np.isfinite(arr)))
        return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)

    def known_ranges(self) -> None:
        """Initializers and constants: their range is known without running anything."""
        from onnx import numpy_helper

        for name, init in self.inits.items():
            if init.data_type == FLOAT and name not in self.ranges:
                arr = numpy_helper.to_array(init)
                self.ranges[name] = float(np.abs(arr).max()) if arr.size else 0.0
        for n in self.g.node:
            if n.op_type == "Constant" and self.types.get(n.output[0]) == FLOAT and _const_value(n) is not None:
                arr = numpy_helper.to_array(_const_value(n).t)
                self.ranges.setdefault(n.output[0], float(np.abs(arr).max()) if arr.size else 0.0)

    def choose_nodes(self) -> None:
        """1. which nodes compute in fp16 (Constants are decided from their users in step 2)."""
        for n in self.g.node:
            floats = [v for v in list(n.input) + list(n.output) if self.is_float(v)]
            if n.op_type == "Constant" or not floats:
                self.low.append(False)
            elif n.op_type in self.keep_ops:
                self.low.append(False)
                if any(self.is_float(o) for o in n.output):  # (Shape & co. only read a float tensor's size)
                    self.reasons[n.op_type] += 1
            elif any(self.ranges.get(v, 0.0) > self.max_abs for v in floats):
                self.low.append(False)
                self.reasons[f"{n.op_type} (|x| > {self.max_abs:g})"] += 1
            else:
                self.low.append(True)

    def wanted_types(self) -> None:
        """2. which float values are wanted in fp16 / fp32 by their consumers; constants only fp16 nodes use
        become fp16, and what fp16 nodes produce is fp16."""
        from onnx import numpy_helper

        g = self.g
        self.need32 = {o.name for o in g.output if self.is_float(o.name)}
        for n, lo in zip(g.node, self.low):
            for idx, v in enumerate(n.input):
                if not self.is_float(v) or _type_neutral_input(n, idx):
                    continue
                (self.need16 if lo and (n.op_type, idx) not in KEEP_FP32_INPUTS else self.need32).add(v)
        for i, n in enumerate(g.node):
            if (n.op_type == "Constant" and self.is_float(n.output[0]) and n.output[0] in self.need16
                    and n.output[0] not in self.need32):
                attr = _const_value(n)
                if attr is not None:
                    attr.t.CopyFrom(numpy_helper.from_array(self.to16(numpy_helper.to_array(attr.t)), attr.t.name))
                    self.low[i] = True
            if self.low[i]:
                self.produced16 |= {o for o in n.output if self.is_float(o)}

    def convert_initializers(self) -> None:
        """3. initializers: converted in place when only fp16 nodes use them, else an fp16 copy is added."""
        from onnx import numpy_helper

        for name, init in self.inits.items():
            if init.data_type != FLOAT or name not in self.need16:
                continue
            half = numpy_helper.from_array(self.to16(numpy_helper.to_array(init)), name)
            if name in self.need32:
                half.name = f"{name}__fp16"
                self.g.initializer.append(half)
                self.alias16[name] = half.name
                self.report["initializers_duplicated"] += 1
            else:
                init.CopyFrom(half)
                self.produced16.add(name)
                self.report["initializers_fp16"] += 1

    def rename_outputs(self) -> None:
        """4. graph outputs computed in fp16: the producer writes a private name, a Cast restores the public one."""
        for o in self.g.output:
            if o.name in self.produced16:
                self.private[o.name] = f"{o.name}__fp16"
        if not self.private:
            return
        for n in self.g.node:
            n.output[:] = [self.private.get(v, v) for v in n.output]
            n.input[:] = [self.private.get(v, v) for v in n.input]
        for public, priv in self.private.items():
            self.produced16.discard(public)
            self.produced16.add(priv)
            self.types[priv] = FLOAT
            self.alias32[priv] = public

    def insert_casts(self) -> None:
        """5. rebuild the node list, inserting each Cast once, right before its first use."""
        from onnx import helper

        g = self.g
        new_nodes = []
        emitted: set[str] = set()

        def cast(src: str, dst: str, to: int) -> str:
            if dst not in emitted:
                new_nodes.append(helper.make_node("Cast", [src], [dst], to=to, name=f"asapbench_cast_{len(emitted)}"))
                emitted.add(dst)
                self.report["casts"] += 1
            return dst

        dup_inits = set(self.alias16.values())

        def as16(v: str) -> str:
            if v in self.produced16:
                return v
            if self.alias16.get(v) in dup_inits:
                return self.alias16[v]
            return cast(v, self.alias16.setdefault(v, f"{v}__to_fp16"), FLOAT16)

        def as32(v: str) -> str:
            if v not in self.produced16:
                return v
            return cast(v, self.alias32.get(v, f"{v}__to_fp32"), FLOAT)

        for n, lo in zip(list(g.node), self.low):
            ins = list(n.input)
            for idx, v in enumerate(ins):
                if not self.is_float(v) or _type_neutral_input(n, idx):
                    continue
                if lo and (n.op_type, idx) not in KEEP_FP32_INPUTS:
                    ins[idx] = as16(v)
                else:
                    ins[idx] = as32(v)
            n.input[:] = ins
            new_nodes.append(n)
            for o in n.output:
                if o in self.alias32:  # a private graph output: cast it back right away
                    as32(o)
        del g.node[:]
        g.node.extend(new_nodes)

    def retype_value_info(self) -> None:
        """6. value_info: fp16 where produced in fp16; drop entries of renamed graph outputs."""
        kept = []
        for vi in self.g.value_info:
            if vi.name in self.private:
                continue
            if vi.name in self.produced16 and vi.type.tensor_type.elem_type == FLOAT:
                vi.type.tensor_type.elem_type = FLOAT16
            kept.append(vi)
        del self.g.value_info[:]
        self.g.value_info.extend(kept)


def emulate_fp16(model, copy: bool = True) -> Any:
    """An fp32 copy of an fp16 ``model`` that rounds every fp16 value to fp16 explicitly.

    Each node that produces fp16 computes in fp32 and its outputs pass through
    ``Cast(to=FLOAT16) -> Cast(to=FLOAT)``, as a GPU fp16 kernel with fp32 accumulation does; fp16
    weights are widened exactly (``copy=False`` edits ``model`` in place). Run it with graph
    optimisations off. This is what the parity gate
    checks on a CPU: onnxruntime's CPU provider has no fp16 kernel for most ops and runs chains of
    them in fp32 without rounding in between, which would hide an fp16 overflow (|x| > 65504 -> inf).
    """
    import onnx
    from onnx import helper, numpy_helper

    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:
        out = model
    g = out.graph
    types = value_types(out)
    for init in g.initializer:
        if init.data_type == FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes = []
    for i, n in enumerate(g.node):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == FLOAT16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
            nodes.append(n)
            continue
        half_outs = [o for o in n.output if o and types.get(o) == FLOAT16]
        if n.op_type == "Cast":
            to = next(a for a in n.attribute if a.name == "to")
            if to.i == FLOAT16:
                half_outs = list(n.output)
                to.i = FLOAT
        renamed = {o: f"{o}__emu32_{i}" for o in half_outs}
        n.output[:] = [renamed.get(o, o) for o in n.output]
        nodes.append(n)
        for o, tmp in renamed.items():
            nodes.append(helper.make_node("Cast", [tmp], [f"{tmp}_h"], to=FLOAT16))
            nodes.append(helper.make_node("Cast", [f"{tmp}_h"], [o], to=FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == FLOAT16:
            vi.type.tensor_type.elem_type = FLOAT
    return out
