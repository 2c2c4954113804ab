"""TensorRT for RTX: real engine builds without a GPU (every tiny model, fp32 and fp16, static and
dynamic), the builder's layer precisions, the engine cache, bad input; and GPU-marked runner tests.

The build tests need only ``tensorrt_rtx`` (``pip install 'asapbench[trt-rtx]'``, which CI installs);
they skip with that reason where it is absent. Nothing here executes an engine unless a GPU and an
NVIDIA driver are present (the runner tests skip with "no NVIDIA driver" otherwise).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asapbench
from asapbench.errors import UserError
from asapbench.inputs import example_input
from exporters import trt_flavours as F
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
_rtx, _rtx_version, _rtx_why = F.probe("rtx")
needs_rtx = pytest.mark.skipif(_rtx is None, reason=f"{_rtx_why}; install it with pip install 'asapbench[trt-rtx]'")
_gpu, _gpu_why = F.gpu_visible()
needs_gpu = pytest.mark.skipif(not _gpu, reason=_gpu_why or "no NVIDIA driver")

TINY = ("asapnet-tiny", "pix2pixhd-tiny", "pix2pixhd-local-tiny", "spade-tiny", "pix2pix-tiny")
H, W = 64, 64


def _export(model: str, out: Path, precision: str, dynamic: bool = False, seed: int = 0):
    from exporters.onnx_export import export_onnx

    torch.manual_seed(seed)
    g = asapbench.create_generator(model)
    g.prepare_for_inference()
    return g, export_onnx(g, H, W, out, precision=precision, dynamic=dynamic, check=False, seed=seed).onnx_path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """{(model, precision): onnx path} for every tiny model (parity is tested in test_export.py)."""
    if _rtx is None:
        pytest.skip(f"{_rtx_why}; install it with pip install 'asapbench[trt-rtx]'")
    out = tmp_path_factory.mktemp("rtx-onnx")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {(m, p): _export(m, out, p)[1] for m in TINY for p in ("fp32", "fp16")}
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# no TensorRT needed
# ---------------------------------------------------------------------------------------------
def test_target_lists_parse_or_fail_inassert_one_line_error():
    assert F.parse_targets("86,89,120") == [86, 89, 120]
    assert F.parse_targets("8.6, 8.9,12.0") == [86, 89, 120]
    assert F.parse_targets(["sm_120", "86", "86"]) == [86, 120]
    assert F.parse_targets(None) is None and F.parse_targets("") is None
    if not _gpu:
        with pytest.raises(UserError, match="--target-sm current: no GPU"):
            F.parse_targets("current")
    for bad in ("abc", "86;89", "8.6.1", "86,x", "-86"):
        with pytest.raises(UserError, match="not a list of compute capabilities") as e:
            F.parse_targets(bad)
        assert "\n" not in str(e.value)


def test_rtx_targets_name_the_valid_choices():
    assert F.resolve_targets(F.RTX, None) == [86, 89, 120]
    assert F.resolve_targets(F.RTX, [75, 121]) == [75, 121]
    with pytest.raises(UserError, match=r"cannot build for SM 9\.0 .*H100/H200.*valid targets: 75,80,86,89,120,121"):
        F.resolve_targets(F.RTX, [86, 90])
    with pytest.raises(UserError, match="SM 10.0"):
        F.resolve_targets(F.RTX, [100])


@pytest.mark.skipif(_gpu, reason="a GPU is visible: enterprise TensorRT may build here")
def test_enterprise_targets_need_a_gpu():
    with pytest.raises(UserError, match="builds only on the GPU it targets.*--trt rtx"):
        F.resolve_targets(F.TENSORRT, [86])


def test_import_and_help_do_not_import_tensorrt_rtx():
    code = (
        "import sys, runpy, asapbench, asapbench.cli, exporters, exporters.trt, exporters.trt_flavours, exporters.cache\n"
        "sys.argv=['asapbench','export','--help']\n"
        "try:\n  runpy.run_module('asapbench', run_name='__main__')\nexcept SystemExit: pass\n"
        "heavy=[m for m in sys.modules if m.split('.')[0] in ('tensorrt','tensorrt_rtx','tensorrt_rtx_bindings','onnx','onnxruntime')]\n"
        "sys.stderr.write(repr(heavy)); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr[-500:]
    assert "--target-sm" in r.stdout and "--trt" in r.stdout


def test_layer_information_parser_reads_both_formats():
    from exporters.trt import format_precisions, parse_layer_info, precision_counts

    types = {"node_Conv_1": "CONVOLUTION", "node_instance_norm": "NORMALIZATION", "cast_1": "CAST",
             "node_matmul": "MATRIX_MULTIPLY", "node_relu": "ACTIVATION"}
    rtx = "\n".join([
        "Layers:",
        "Name: node_Conv_1_myl0_1, LayerType: correlation, Inputs: [ { Name: a, Datatype: Half, Format: x }], "
        "Constants: [], Outputs: [ { Name: b, Datatype: Half }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_Conv_1]",
        "Name: __myl_Cast_0, LayerType: kgen, Inputs: [ { Name: b, Datatype: Half }], Constants: [], Outputs: [ { Name: c, "
        "Datatype: Float }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: cast_1][ONNX Layer: node_Conv_1]",
        "Name: __myl_Inor_1, LayerType: runtime_function, Inputs: [ { Name: c, Datatype: Float }], Constants: [], Outputs: "
        "[ { Name: d, Datatype: Float }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_instance_norm]",
        "Name: node_matmul_2, LayerType: gemm, Inputs: [ { Name: d, Datatype: Half }, { Name: e, Datatype: Half }], "
        "Constants: [], Outputs: [ { Name: f, Datatype: Half }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_matmul]",
        # a fused convolution + fp32 element-wise op: the convolution's precision is its weights'
        "Name: __myl_CorrCastMulAdd_0, LayerType: runtime_fusion, Inputs: [ { Name: g, Dimensions: [1,64,4,4], Datatype: Float },"
        " { Name: h, Dimensions: [1,8,4,4], Datatype: Half }], Constants: [ { Name: w, Dimensions: [64,8,3,3], Datatype: Half },"
        " { Name: b, Dimensions: [1,64,1,1], Datatype: Half }], Outputs: [ { Name: i, Datatype: Float }], TacticName: , "
        "StreamId: 0, Metadata: [ONNX Layer: node_relu][ONNX Layer: node_Conv_1]",
    ])
    layers = parse_layer_info(rtx, types)
    assert [la["category"] for la in layers] == ["convolution", "other", "normalization", "matmul", "convolution"]
    assert [la["precision"] for la in layers] == ["half", "half", "float", "half", "half"]
    counts = precision_counts(layers)
    assert counts["convolution"] == {"half": 2} and counts["all"] == {"half": 4, "float": 1}
    assert format_precisions(counts) == "conv 2 half; matmul 1 half; norm 1 float"
    ent = ("Engine Layer Information:\nLayer(CaskConvolution): node_Conv_1 + node_relu, Tactic: 0x1, label (Half[1,3,64,64]) "
           "-> out (Half[1,8,64,64])\nLayer(Reformat): reformat_0, Tactic: 0x0, out (Half[1,8,64,64]) -> r (Float[1,8,64,64])")
    layers = parse_layer_info(ent, types)
    assert [(la["category"], la["precision"]) for la in layers] == [("convolution", "half"), ("other", "half")]


def test_rtx_cache_key_holds_targets_not_the_build_gpu():
    from exporters.cache import (
        cache_lookup,
        engine_key,
        engine_paths,
        environment_mismatch,
        key_digest,
    )

    env = {"flavour": "rtx", "tensorrt": "1.7.1.116", "tensorrt_cuda": "cu12", "targets": [86, 89, 120],
           "build_gpu": None, "cuda_driver": None, "sm": None}
    opts = {"strongly_typed": True, "workspace_gb": 8.0}
    sha = "ab" * 32
    key = engine_key(sha, env, opts)
    assert key["flavour"] == "rtx" and key["targets"] == [86, 89, 120] and "gpu_name" not in key
    same = engine_key(sha, {**env, "build_gpu": "NVIDIA GeForce RTX 4090", "sm": 89}, opts)
    assert key_digest(same) == key_digest(key)  # the build machine's GPU does not split the cache
    for change in ({"targets": [86]}, {"tensorrt": "1.8.0.0"}, {"tensorrt_cuda": "cu13"}):
        assert key_digest(engine_key(sha, {**env, **change}, opts)) != key_digest(key)
    ent = {"tensorrt": "1.7.1.116", "tensorrt_cuda": "cu12", "cuda_runtime": "12.8", "gpu_name": "x", "compute_capability": "8.6"}
    assert key_digest(engine_key(sha, ent, opts)) != key_digest(key)  # the flavour is part of the key
    with pytest.raises(ValueError, match="targets"):
        engine_key(sha, {k: v for k, v in env.items() if k != "targets"}, opts)
    side = {"key": key}
    assert environment_mismatch(side, {**env, "sm": 89}) == []
    assert "do not include this GPU's SM 7.5" in environment_mismatch(side, {**env, "sm": 75})[0]
    assert "TensorRT-RTX 1.7.1.116 (engine) vs 1.8.0 (here)" in environment_mismatch(side, {**env, "tensorrt": "1.8.0"})[0]
    assert "flavour rtx (engine) vs tensorrt" in environment_mismatch(side, {"flavour": "tensorrt"})[0]
    e, s = engine_paths("d", "m", key)
    assert cache_lookup(e, s, key)[0] is None


# ---------------------------------------------------------------------------------------------
# real TensorRT-RTX builds (no GPU needed)
# ---------------------------------------------------------------------------------------------
@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", TINY)
def test_every_tiny_model_builds_with_the_expected_layer_precisions(tiny_onnx, tmp_path, model, precision):
    from exporters.trt import build_engine

    r = build_engine(tiny_onnx[(model, precision)], tmp_path, flavour="rtx", targets="86,89,120")
    assert not r.reused and r.engine_path.is_file() and r.engine_path.stat().st_size == r.sidecar["engine_bytes"]
    side = json.loads(r.sidecar_path.read_text())
    assert side["flavour"] == r.flavour == "rtx" and side["targets"] == [86, 89, 120] == r.targets
    assert side["key"]["tensorrt"] == _rtx_version and side["key"]["tensorrt_cuda"] == "cu12"
    assert "gpu_name" not in side["key"] and side["timing_cache"] is None
    assert side["executed"] is False
    assert _gpu or "never executed here" in side["note"]
    assert side["model"] == model and side["precision"] == precision and side["build_seconds"] > 0
    assert "TensorRT-RTX" in r.label and "8.6/8.9/12.0" in r.label
    counts = side["layer_precisions"]
    assert side["layers_built"] > 0 and counts["convolution"], counts  # every generator has convolutions
    # each convolution / matrix product runs in the precision its ONNX node has (the fp16 converter keeps
    # a few SPADE convolutions fp32 where activations would overflow half): read from the builder's layers
    graph = _onnx_weight_types(tiny_onnx[(model, precision)])
    checked = 0
    for name, _kind, cat, prec, nodes in side["compute_layers"]:
        if cat in ("convolution", "matmul"):
            want = {graph[n] for n in nodes if n in graph}
            if len(want) == 1:
                assert prec == want.pop(), (name, prec, nodes)
                checked += 1
    assert checked >= len(counts["convolution"]) and checked > 0
    if precision == "fp32":
        assert set(counts["all"]) <= {"float", "none"}, counts
    else:
        assert counts["convolution"].get("half", 0) > counts["convolution"].get("float", 0), counts
        assert set(counts.get("matmul", {})) <= {"half"}, counts
    # normalisation stays fp32 inside fp16 engines (ASAP-Net and pix2pixHD use InstanceNorm)
    assert set(counts.get("normalization", {})) <= {"float"}, counts
    if model.startswith(("asapnet", "pix2pixhd")):
        assert counts.get("normalization", {}).get("float", 0) > 0, counts
    if model.startswith("asapnet"):
        assert counts["matmul"].get("half" if precision == "fp16" else "float", 0) > 0, counts  # the pixelwise MLPs


def _onnx_weight_types(path) -> dict[str, str]:
    """{Conv/ConvTranspose/MatMul/Gemm node: 'half'|'float'} from the dtype of its weight (input 1)."""
    import onnx

    m = onnx.load(str(path))
    types = {i.name: i.data_type for i in m.graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)})
    names = {onnx.TensorProto.FLOAT16: "half", onnx.TensorProto.FLOAT: "float"}
    out = {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(n.input) > 1 and types.get(n.input[1]) in names:
            out[n.name] = names[types[n.input[1]]]
    return out


@needs_rtx
def test_dynamic_profile_builds(tmp_path):
    from exporters.trt import build_engine, dynamic_profile

    g, onnx_path = _export("asapnet-tiny", tmp_path, "fp16", dynamic=True)
    shapes = dynamic_profile(g.input_nc, [(64, 64), (128, 128)], batch=2)
    r = build_engine(onnx_path, tmp_path, flavour="rtx", dynamic_shapes={"label": shapes})
    assert r.sidecar["build_options"]["profiles"] == {"label": [list(s) for s in shapes]}
    # every InstanceNormalization node of the fp16 ONNX graph (read from the file) runs in fp32 in the engine
    import onnx

    norm_nodes = {n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "InstanceNormalization"}
    assert norm_nodes  # asapnet-tiny normalises
    norm_layers = [(prec, set(nodes)) for _n, _k, cat, prec, nodes in r.sidecar["compute_layers"] if cat == "normalization"]
    assert set().union(*(nodes for _, nodes in norm_layers)) >= norm_nodes, norm_layers
    assert {prec for prec, _ in norm_layers} == {"float"}, norm_layers
    with pytest.raises(UserError, match="min/opt/max"):
        build_engine(onnx_path, tmp_path, flavour="rtx")


@needs_rtx
def test_cache_reuses_identical_keys_and_rebuilds_on_any_change(tiny_onnx, tmp_path, monkeypatch):
    from exporters.trt import build_engine

    onnx_path = tiny_onnx[("asapnet-tiny", "fp16")]
    a = build_engine(onnx_path, tmp_path, flavour="rtx")
    assert a.targets == [86, 89, 120]  # the portable default
    b = build_engine(onnx_path, tmp_path, flavour="rtx", targets=[86, 89, 120])
    assert b.reused and b.engine_path == a.engine_path
    c = build_engine(onnx_path, tmp_path, flavour="rtx", targets=[89])
    assert not c.reused and c.engine_path != a.engine_path and c.targets == [89]
    # another ONNX (same graph, other bytes) -> another engine
    other = tmp_path / "copy" / onnx_path.name
    other.parent.mkdir()
    import onnx

    proto = onnx.load(str(onnx_path))
    proto.doc_string = "same graph, other bytes"
    onnx.save(proto, str(other))
    d = build_engine(other, tmp_path, flavour="rtx")
    assert not d.reused and d.sidecar["onnx_sha256"] != a.sidecar["onnx_sha256"]
    # a TensorRT-RTX upgrade -> rebuild, the old engine is kept untouched
    before = a.engine_path.read_bytes()
    monkeypatch.setattr(_rtx, "__version__", "1.8.0.1")
    e = build_engine(onnx_path, tmp_path, flavour="rtx")
    assert not e.reused and e.engine_path != a.engine_path and e.sidecar["key"]["tensorrt"] == "1.8.0.1"
    monkeypatch.undo()
    assert a.engine_path.read_bytes() == before
    # a truncated cached engine is rebuilt in place, atomically (never left half-written)
    a.engine_path.write_bytes(before[: len(before) // 2])
    f = build_engine(onnx_path, tmp_path, flavour="rtx")
    assert not f.reused and f.engine_path == a.engine_path and f.engine_path.stat().st_size == f.sidecar["engine_bytes"]
    assert not list(tmp_path.glob(".*.tmp"))


@needs_rtx
def test_corrupt_foreign_and_stale_engines_are_refused_before_deserializing(tiny_onnx, tmp_path):
    from exporters.trt import TrtRunner, build_engine, check_engine_file

    r = build_engine(tiny_onnx[("asapnet-tiny", "fp16")], tmp_path, flavour="rtx")
    data = r.engine_path.read_bytes()
    # truncated, with its sidecar
    trunc = tmp_path / "trunc.engine"
    trunc.write_bytes(data[:1000])
    Path(str(trunc) + ".json").write_text(r.sidecar_path.read_text())
    with pytest.raises(UserError, match="modified or truncated"):
        check_engine_file(trunc)
    # foreign (an enterprise-TensorRT header) and junk, without sidecars: the runtime's own check says malformed
    for name, blob in (("foreign.engine", b"ftrt" + data[4:]), ("junk.engine", b"not an engine" * 10)):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(UserError, match="refuses engine .*not a valid engine file") as e:
            TrtRunner(p)
        assert "\n" not in str(e.value)
    # stale: built by another TensorRT-RTX version
    stale = tmp_path / "stale.engine"
    stale.write_bytes(data)
    side = json.loads(r.sidecar_path.read_text())
    side["key"]["tensorrt"] = "1.6.0.0"
    Path(str(stale) + ".json").write_text(json.dumps(side))
    with pytest.raises(UserError, match=r"built for another setup \(TensorRT-RTX 1\.6\.0\.0 \(engine\) vs"):
        TrtRunner(stale)
    # the wrong flavour asked for
    with pytest.raises(UserError, match="built with TensorRT-RTX, not --trt tensorrt"):
        TrtRunner(r.engine_path, flavour="tensorrt")
    # a good engine: refused only for the lack of a GPU
    if not _gpu:
        with pytest.raises(UserError, match="cannot run TensorRT-RTX engine .* here: no NVIDIA driver"):
            TrtRunner(r.engine_path)


@needs_rtx
@pytest.mark.skipif(F.probe("tensorrt")[0] is not None, reason="enterprise TensorRT is installed here")
def test_asking_for_the_flavour_that_is_not_installed_fails_inassert_one_line_error(tiny_onnx, tmp_path):
    from exporters.trt import build_engine

    with pytest.raises(UserError, match=r"--trt tensorrt: .*'tensorrt' is not importable.*use --trt rtx") as e:
        build_engine(tiny_onnx[("asapnet-tiny", "fp16")], tmp_path, flavour="tensorrt")
    assert "\n" not in str(e.value)
    assert F.resolve_flavour("auto") is F.RTX and F.resolve_flavour("rtx") is F.RTX
    with pytest.raises(UserError, match="unknown --trt"):
        F.resolve_flavour("tensorrt-lean")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "asapbench", "export", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, check=False)




@needs_rtx
def test_cli_builds_portable_engines_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    r = _cli("--model", "asapnet-tiny", "--res", "64x64", "--engine", "trt", "--precision", "fp16",
             "--target-sm", "86,89,120", "--no-check", "--out", str(out))
    assert r.returncode == 0, r.stderr
    engines = list(out.glob("*.engine"))
    assert len(engines) == 1
    side = json.loads(Path(str(engines[0]) + ".json").read_text())
    assert side["flavour"] == "rtx" and side["targets"] == [86, 89, 120]
    assert "TensorRT-RTX" in r.stdout and "8.6/8.9/12.0" in r.stdout and "norm" in r.stdout
    if not _gpu:
        assert "never executed here" in r.stdout
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # bad input: one line, exit 2, nothing in the folder touched
    assert_one_line_error(_cli("--model", "asapnet-tiny", "--res", "64x64", "--engine", "trt", "--target-sm", "86,90", "--out", str(out)),
              "cannot build for SM 9.0", "valid targets: 75,80,86,89,120,121")
    assert_one_line_error(_cli("--model", "asapnet-tiny", "--res", "64x64", "--engine", "trt", "--target-sm", "eighty-six", "--out", str(out)),
              "not a list of compute capabilities")
    if F.probe("tensorrt")[0] is None:
        assert_one_line_error(_cli("--model", "asapnet-tiny", "--res", "64x64", "--engine", "trt", "--trt", "tensorrt", "--out", str(out)),
                  "--trt tensorrt", "asapbench[trt]", "use --trt rtx")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------------------------
# running (needs an NVIDIA GPU and driver)
# ---------------------------------------------------------------------------------------------
@needs_rtx
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_engine_runs_after_warm_up_with_a_runtime_cache(tmp_path, precision):
    from asapbench.weights import spread_for_resolution
    from exporters.onnx_export import export_onnx
    from exporters.trt import TrtRunner, build_engine
    from exporters.validate import judge_outputs

    # realistic (spread) weights, as `run` and `export` use: a collapsed or saturated tanh would match anything
    g = asapbench.create_generator("asapnet-tiny").prepare_for_inference()
    spread_for_resolution(g, H, W, seed=0)
    onnx_path = export_onnx(g, H, W, tmp_path, precision=precision, check=False).onnx_path
    sm = F.current_sm()
    if sm not in F.RTX.targets:
        pytest.skip(f"TensorRT-RTX cannot run on SM {F.sm_label(sm)}")
    r = build_engine(onnx_path, tmp_path, flavour="rtx", targets=[sm])
    runner = TrtRunner(r.engine_path, runtime_cache_dir=tmp_path / "rc")
    x = example_input(g, 1, H, W, seed=3)
    with torch.inference_mode():
        ref = g(x).numpy()
    got = runner.infer(x.numpy())
    assert runner.warmup_info["runs"] >= 1 and "just in time" in runner.note and "TensorRT-RTX" in runner.note
    assert runner.runtime_cache_path.is_file() and runner.runtime_cache_path.parent == tmp_path / "rc"
    # the export gate's own criteria (fp32: max |err| <= 1e-4; fp16: PSNR >= 40 dB, no NaN/Inf) on a reference
    # that is neither constant, saturated nor non-finite
    verdict = judge_outputs(ref, got, precision)
    assert not verdict["degenerate"], verdict
    assert verdict["passed"], (verdict["failures"], verdict["criterion"])
    runner.close()
    again = TrtRunner(r.engine_path, runtime_cache_dir=tmp_path / "rc")
    again.infer(x.numpy())
    assert again.runtime_cache_loaded


@needs_rtx
@pytest.mark.gpu
@needs_gpu
def test_engine_for_other_targets_is_refused_on_this_gpu(tmp_path):
    from exporters.trt import TrtRunner, build_engine

    sm = F.current_sm()
    other = [t for t in F.RTX.targets if t != sm][:1]
    _, onnx_path = _export("asapnet-tiny", tmp_path, "fp16")
    r = build_engine(onnx_path, tmp_path, flavour="rtx", targets=other)
    with pytest.raises(UserError, match="do not include this GPU's SM"):
        TrtRunner(r.engine_path)


@needs_rtx
def test_engines_report_builds_in_child_processes_and_says_nothing_ran(tiny_onnx, tmp_path):
    from asapbench.commands.engines import build_report

    junk = tmp_path / "onnx" / "junk.onnx"
    junk.parent.mkdir()
    junk.write_bytes(b"not an onnx file")
    good = tiny_onnx[("asapnet-tiny", "fp16")]
    rows = build_report([str(good), str(junk)], out=tmp_path / "rep", work=tmp_path / "eng", trt="rtx",
                        target_sm="86,89,120", keep_engines=False, log=lambda s: None)
    ok, bad = rows
    assert ok["status"] == "built, not executed" and ok["parse"] == "ok" and ok["peak_rss_mb"] > 50
    assert ok["engine_mb"] > 0 and ok["build_s"] > 0 and ok["norm"].endswith("float") and "half" in ok["conv"]
    assert bad["parse"] == "FAILED" and bad["status"].startswith("FAILED")
    assert not list((tmp_path / "eng").glob("*.engine"))  # --no-keep-engines
    md = (tmp_path / "rep" / "build.md").read_text()
    assert "No engine was executed" in md and "TensorRT-RTX" in md and "| asapnet-tiny |" in md
    side = json.loads((tmp_path / "rep" / "build.json").read_text())
    assert side["environment"]["tensorrt_flavour"] == "rtx" and len(side["rows"]) == 2
    assert (tmp_path / "rep" / "build.csv").read_text().startswith("model,preset,resolution,precision,parse,build_s")
    with pytest.raises(UserError, match="neither an .onnx file nor a folder"):
        build_report([str(tmp_path / "nope.txt")], out=tmp_path / "rep")


def test_a_build_out_of_workspace_names_the_value_to_pass():
    from exporters.trt import DEFAULT_WORKSPACE_GB, workspace_hint

    # verbatim from TensorRT-RTX 1.7.1 building SPADE fp32 at 2048x2048 with an 8 GiB limit
    err = "[localCheckMacros.cpp::getErrorStr::132] Error Code 2: OutOfMemory (Requested size was 8962049536 bytes.)"
    hint = workspace_hint(err, 8)
    assert hint.startswith("the builder could not allocate 8.35 GiB (the 8 GiB workspace limit plus 0.35 GiB)")
    assert "--workspace-gb 11" in hint
    assert workspace_hint("Exceeded mem budget", 4).endswith("pass --workspace-gb 16")
    # the default limit covers the request of that recorded build (8962049536 bytes), from the CLI too
    assert DEFAULT_WORKSPACE_GB * 2**30 >= 8962049536
    from typer.main import get_command

    from asapbench.cli import app

    for name in ("export", "engines"):
        (opt,) = [p for p in get_command(app).commands[name].params if "--workspace-gb" in p.opts]
        assert opt.default * 2**30 >= 8962049536, (name, opt.default)


@needs_rtx
def test_a_cached_engine_is_reused_without_writing(tiny_onnx, tmp_path, monkeypatch):
    """A valid engine in a read-only cache is served: the cache is looked up before any write test."""
    import asapbench.fsutil as fsutil
    from exporters.trt import build_engine

    onnx_path = tiny_onnx[("asapnet-tiny", "fp16")]
    first = build_engine(onnx_path, tmp_path, flavour="rtx")
    assert not first.reused

    def no_writes(*a, **k):
        raise AssertionError("the engine folder was tested for writing although a valid engine was cached")

    monkeypatch.setattr(fsutil, "ensure_writable_dir", no_writes)
    again = build_engine(onnx_path, tmp_path, flavour="rtx")
    assert again.reused and again.engine_path == first.engine_path


@needs_rtx
def test_engines_report_replaces_a_rebuilt_cell_and_can_clear_notes(tiny_onnx, tmp_path):
    """One row per cell: the same model/resolution/precision built again (here from a renamed copy, as a
    preset change renames the file) replaces the earlier row; --clear-notes drops the earlier notes."""
    import shutil

    from asapbench.commands.engines import build_report

    good = tiny_onnx[("asapnet-tiny", "fp16")]
    kw = dict(out=tmp_path / "rep", work=tmp_path / "eng", trt="rtx", target_sm="86", keep_engines=False,
              log=lambda s: None)
    build_report([str(good)], notes=["old note"], **kw)
    other = tmp_path / "renamed" / ("x-" + good.name)
    other.parent.mkdir()
    shutil.copy(good, other)
    shutil.copy(good.with_suffix(".json"), other.with_suffix(".json"))
    build_report([str(other)], notes=["new note"], **kw)
    side = json.loads((tmp_path / "rep" / "build.json").read_text())
    assert [r["onnx"] for r in side["rows"]] == [other.name]
    assert side["notes"] == ["old note", "new note"]
    build_report([str(other)], notes=["only note"], clear_notes=True, **kw)
    side = json.loads((tmp_path / "rep" / "build.json").read_text())
    assert side["notes"] == ["only note"] and len(side["rows"]) == 1
