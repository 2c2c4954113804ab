"""Node-by-node evaluation (exporters.node_eval): the same values as a whole-graph onnxruntime session,
with only the live values held -- what the fp16 calibration and the parity gate above 512 x 1024 pixels
run on (docs/export.md, "Cost and memory")."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from exporters import validate  # noqa: E402
from exporters.fp16 import activation_ranges  # noqa: E402
from exporters.node_eval import NodeByNodeSession  # noqa: E402
from exporters.onnx_export import INPUT_NAME  # noqa: E402
from exporters.ort import make_session  # noqa: E402


def _chain(n: int = 6, hw: int = 32):
    """x -> (Conv -> Relu) x n, with a Constant node feeding an Add, and a second output."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    cur = "x"
    for i in range(n):
        w = numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        cur = f"r{i}"
    nodes.append(helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32(0.5))))
    nodes.append(helper.make_node("Add", [cur, "k"], ["y"]))
    nodes.append(helper.make_node("ReduceMean", ["r0"], ["side"], keepdims=0))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", 1, [1, 4, hw, hw])],
                          [helper.make_tensor_value_info("y", 1, [1, 4, hw, hw]),
                           helper.make_tensor_value_info("side", 1, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def _whole(model, feed, outputs=None):
    return make_session(model).run(outputs, feed)


def _all_values_as_outputs(model):
    """A copy of ``model`` with every node output a graph output (the memory-hungry way)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have:
                m.graph.output.append(helper.make_tensor_value_info(o, 1, None))
    return m


def test_chain_gives_the_whole_session_outputs_and_frees_values():
    m = _chain()
    x = np.random.default_rng(1).standard_normal((1, 4, 32, 32)).astype(np.float32)
    sess = NodeByNodeSession(m)
    y, side = sess.run(None, {"x": x})
    ref_y, ref_side = _whole(m, {"x": x})
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(side, ref_side, rtol=0, atol=1e-6)
    seen: dict[str, int] = {}
    sess.run(None, {"x": x}, on_value=lambda n, a: seen.__setitem__(n, a.nbytes))
    # every value was seen once, but at most the input, one conv output and its relu (+ the kept
    # outputs) were held at once
    assert {"x", "c0", "r5", "k", "y", "side"} <= set(seen)
    one = x.nbytes
    assert sum(seen.values()) > 12 * one
    assert sess.peak_live_bytes <= 4 * one


def test_missing_input_is_refused():
    with pytest.raises(ValueError, match="missing input 'x'"):
        NodeByNodeSession(_chain()).run(None, {})


def test_activation_ranges_equal_every_intermediate_max():
    """The calibration's ranges are the max |value| of each intermediate, as a session that returns every
    intermediate computes them."""
    m = _chain()
    x = np.random.default_rng(2).standard_normal((1, 4, 32, 32)).astype(np.float32) * 3
    ranges = activation_ranges(m, [{"x": x}])
    full = _all_values_as_outputs(m)
    names = [o.name for o in full.graph.output]
    for name, v in zip(names, _whole(full, {"x": x}, names)):
        assert ranges[name] == pytest.approx(float(np.abs(v).max()), rel=1e-5, abs=1e-6), name
    assert ranges["x"] == pytest.approx(float(np.abs(x).max()))


def test_generator_node_by_node_matches_the_whole_session(tiny_asapnet_export):
    g, path = tiny_asapnet_export
    m = onnx.load(str(path))
    x = validate.parity_inputs(g, 64, 128, count=1)[0][1].numpy()
    got = NodeByNodeSession(m).run(None, {INPUT_NAME: x})[0]
    ref = _whole(m, {INPUT_NAME: x})[0]
    assert np.abs(got - ref).max() <= 1e-4


def test_gate_above_the_large_size_runs_node_by_node_and_still_catches_a_fault(tiny_asapnet_export, tmp_path, monkeypatch):
    g, path = tiny_asapnet_export
    monkeypatch.setattr(validate, "LARGE_INPUT_PIXELS", 32 * 32)
    inputs = validate.parity_inputs(g, 64, 128, count=1)
    par = validate.check_parity(path, g, inputs, "fp32")
    assert par["passed"], par["failures"]
    assert "node by node" in par["runtime"]
    assert par["samples"][0]["onnxruntime_peak_live_mib"] > 0
    # the same graph with its output negated must fail the lean gate
    m = onnx.load(str(path))
    out = m.graph.output[0].name
    for n in m.graph.node:
        for i, o in enumerate(n.output):
            if o == out:
                n.output[i] = out + "_pre"
    m.graph.node.append(helper.make_node("Neg", [out + "_pre"], [out]))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    par = validate.check_parity(bad, g, inputs, "fp32")
    assert not par["passed"] and "node by node" in par["runtime"]
