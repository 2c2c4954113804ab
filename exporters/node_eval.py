"""Run an ONNX graph in onnxruntime one node at a time, holding only the values still needed.

An onnxruntime session over a whole generator plans its memory for speed: at 2048 x 2048 a CPU
inference of SPADE holds about four times the activations that are alive at any one point of the
graph, and a copy of the graph with extra outputs (the fp16 calibration's per-value ranges) holds twice
that again. The parity gate and the fp16 calibration need the graph's values, not its speed, so they
run it here instead: each node in a session of its own (onnxruntime's own kernel for that op, with its
weights as constants), in the file's topological order, freeing every value after its last use. Peak
memory is then the live set of the graph plus one node's output -- what PyTorch eager needs for the
same model -- and time is that of an unfused inference plus about a millisecond per node to create its
session (docs/export.md, "Cost and memory").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from asapbench.errors import require
from exporters.onnx_types import value_types
from exporters.ort import make_session

#: ops whose attributes hold subgraphs: they would need their outer scope's values, so a graph
#: with them runs as one ordinary session instead
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})


class NodeByNodeSession:
    """``onnxruntime.InferenceSession``-like runner of ``model`` (a ModelProto), one node at a time.

    ``run(output_names, feed)`` returns the requested graph outputs (all when None). ``on_value(name,
    array)``, when given, sees every float value the graph computes (and its float inputs) the moment it
    exists, before it may be freed -- how :func:`exporters.fp16.activation_ranges` reads ranges without
    keeping values alive.
    """

    def __init__(self, model, optimize: bool = True):
        require("onnxruntime", why="to run exported graphs")
        g = model.graph
        if any(n.op_type in _SUBGRAPH_OPS for n in g.node):
            raise ValueError("graphs with control flow (If/Loop/Scan) cannot run node by node")
        self._opsets = list(model.opset_import)
        self._functions = list(model.functions)
        self._ir_version = model.ir_version
        self._init = {t.name: t for t in g.initializer}
        self._nodes = list(g.node)
        self._inputs = [i.name for i in g.input if i.name not in self._init]
        self._outputs = [o.name for o in g.output]
        self._out_types = value_types(model)  # element type of each node output (single-node graphs declare it)
        self._optimize = optimize
        #: largest total of bytes held in values at once during the last run (after each node)
        self.peak_live_bytes = 0
        # index of the last node that reads each value (graph outputs are kept to the end)
        self._last_use: dict[str, int] = {}
        for i, n in enumerate(self._nodes):
            for name in n.input:
                if name:
                    self._last_use[name] = i

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def _session(self, node, feed: Mapping[str, np.ndarray]):
        from onnx import helper

        consts = [self._init[name] for name in dict.fromkeys(node.input) if name in self._init]
        ins = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(feed[name].dtype), feed[name].shape)
               for name in dict.fromkeys(node.input) if name and name not in self._init]
        outs = []
        for name in node.output:
            if name:
                if name not in self._out_types:
                    raise ValueError(f"no element type known for {name!r} (node {node.name or node.op_type})")
                outs.append(helper.make_tensor_value_info(name, self._out_types[name], None))
        graph = helper.make_graph([node], "node", ins, outs, initializer=consts)
        one = helper.make_model(graph, opset_imports=self._opsets, functions=self._functions)
        one.ir_version = self._ir_version
        # one node has nothing to fuse; the layout transform of every optimization ("all") would only add a
        # reorder before and after each convolution
        sess = make_session(one, arena=False, optimize="extended" if self._optimize else "none")
        del one, graph
        return sess, [i.name for i in ins], [o.name for o in outs]

    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray],
            on_value: Callable[[str, np.ndarray], Any] | None = None) -> list[np.ndarray]:
        import onnx

        wanted = list(output_names or self._outputs)
        keep = set(wanted)
        values: dict[str, np.ndarray] = {}
        self.peak_live_bytes = 0
        for name in self._inputs:
            if name not in feed:
                raise ValueError(f"missing input {name!r}")
            values[name] = np.asarray(feed[name])
            if on_value is not None:
                on_value(name, values[name])
        for i, node in enumerate(self._nodes):
            if node.op_type == "Constant":
                outs = {node.output[0]: onnx.numpy_helper.to_array(_constant_tensor(node))}
            else:
                sess, in_names, out_names = self._session(node, values)
                res = sess.run(out_names, {name: values[name] for name in in_names})
                del sess
                outs = dict(zip(out_names, res))
            for name, arr in outs.items():
                if on_value is not None:
                    on_value(name, arr)
                values[name] = arr
            del outs
            self.peak_live_bytes = max(self.peak_live_bytes, sum(v.nbytes for v in values.values()))
            for name in set(node.input) | set(node.output):
                if name in values and name not in keep and self._last_use.get(name, -1) <= i:
                    del values[name]
        missing = [n for n in wanted if n not in values and n not in self._init]
        if missing:
            raise ValueError(f"outputs not computed: {missing}")
        return [values[n] if n in values else onnx.numpy_helper.to_array(self._init[n]) for n in wanted]


def _constant_tensor(node):
    """The TensorProto a Constant node holds (``value`` or one of the ``value_*`` attributes)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return helper.make_tensor("c", 1, [], [a.f])
        if a.name == "value_floats":
            return helper.make_tensor("c", 1, [len(a.floats)], list(a.floats))
        if a.name == "value_int":
            return helper.make_tensor("c", 7, [], [a.i])
        if a.name == "value_ints":
            return helper.make_tensor("c", 7, [len(a.ints)], list(a.ints))
    raise ValueError(f"unsupported Constant node {node.name!r}")
