"""ONNX value types, a leaf of exporters/: the element type of every named value of a graph. The fp16
conversion (:mod:`exporters.fp16`) and node-by-node evaluation (:mod:`exporters.node_eval`) both read it.
onnx is imported inside the function.
"""

from __future__ import annotations

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def value_types(model) -> dict[str, int]:
    """Element type of every named value of the main graph (inputs, initializers, intermediates)."""
    import onnx

    g = model.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for n in g.node:
        if n.op_type == "Cast" and n.output[0] not in types:
            types[n.output[0]] = next(a.i for a in n.attribute if a.name == "to")
    missing = [o for n in g.node for o in n.output if o and o not in types]
    if missing:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.HasField("tensor_type") and vi.name not in types:
                types[vi.name] = vi.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and n.output[0] not in types:
                    types[n.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[n.output[0]] = FLOAT
    return types
