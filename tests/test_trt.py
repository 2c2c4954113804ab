"""TensorRT: the engine-cache key logic (pure Python, runs everywhere) and, where `tensorrt` imports
and a GPU is present, real engine builds, the cache and the runner (marked `trt`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import asapbench
from asapbench.errors import UserError
from asapbench.inputs import example_input
from exporters.cache import (
    ENV_FIELDS,
    cache_lookup,
    engine_key,
    engine_paths,
    environment_mismatch,
    key_differences,
    key_digest,
)
from exporters.trt import _profiles, dynamic_profile, trt_status

ENV = {
    "tensorrt": "10.14.1",
    "tensorrt_cuda": "cu12",
    "cuda_runtime": "12.8",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
}
OPTS = {"strongly_typed": True, "workspace_gb": 4.0, "opt_level": 3, "profiles": None,
        "static_shapes": {"label": [1, 36, 256, 512]}}
SHA = "ab" * 32


def fake_engine(tmp_path: Path, key: dict, payload: bytes = b"engine-bytes") -> tuple[Path, Path]:
    """A cache entry as build_engine writes it (engine file + sidecar with key and sha256)."""
    import hashlib

    e, s = engine_paths(tmp_path, "asapnet-cityscapes-256x512-fp16", key)
    e.write_bytes(payload)
    s.write_text(json.dumps({"key": key, "engine_sha256": hashlib.sha256(payload).hexdigest(),
                             "engine_bytes": len(payload), "build_seconds": 1.0}))
    return e, s


# ---------------------------------------------------------------------------------------------
# cache keys: no TensorRT needed
# ---------------------------------------------------------------------------------------------
def test_every_field_is_part_of_the_key():
    base = engine_key(SHA, ENV, OPTS)
    variants = [engine_key("cd" * 32, ENV, OPTS)]  # other weights, same topology (onnxruntime#6455)
    for f in ENV_FIELDS:  # TensorRT upgrade (#22244), other GPU, other CUDA
        variants.append(engine_key(SHA, {**ENV, f: str(ENV[f]) + "x"}, OPTS))
    for o, v in (("workspace_gb", 8.0), ("opt_level", 5), ("strongly_typed", False),
                 ("profiles", {"label": [[1, 36, 256, 512], [1, 36, 512, 1024], [1, 36, 1024, 2048]]})):
        variants.append(engine_key(SHA, ENV, {**OPTS, o: v}))
    digests = {key_digest(k) for k in variants}
    assert key_digest(base) not in digests and len(digests) == len(variants)
    assert key_digest(engine_key(SHA, dict(ENV), dict(OPTS))) == key_digest(base)  # deterministic
    assert engine_paths("d", "m", base) != engine_paths("d", "m", variants[0])
    # informational environment fields (the driver) do not split the cache
    assert key_digest(engine_key(SHA, {**ENV, "cuda_driver": "575.1"}, OPTS)) == key_digest(base)


def test_key_needs_a_hash_and_the_whole_environment():
    with pytest.raises(ValueError):
        engine_key("", ENV, OPTS)
    with pytest.raises(ValueError, match="gpu_name"):
        engine_key(SHA, {k: v for k, v in ENV.items() if k != "gpu_name"}, OPTS)


def test_cache_reuses_only_a_full_match(tmp_path):
    key = engine_key(SHA, ENV, OPTS)
    e, s = fake_engine(tmp_path, key)
    side, reason = cache_lookup(e, s, key)
    assert side is not None and reason == "all keys match"

    # the same file names with a different recorded key (e.g. a hand-copied sidecar) are not trusted
    for other_env in ({**ENV, "tensorrt": "11.0.0"}, {**ENV, "gpu_name": "NVIDIA A100-SXM4-40GB"}):
        other = engine_key(SHA, other_env, OPTS)
        side, reason = cache_lookup(e, s, other)
        assert side is None and "differs" in reason

    side, reason = cache_lookup(e, s, engine_key(SHA, ENV, {**OPTS, "workspace_gb": 2.0}))
    assert side is None and "build option workspace_gb" in reason


def test_tampered_or_incomplete_cache_entries_are_rebuilt(tmp_path):
    key = engine_key(SHA, ENV, OPTS)
    e, s = fake_engine(tmp_path, key)
    e.write_bytes(b"engine-bytes-truncated")
    assert cache_lookup(e, s, key) == (None, "cached engine file does not match its sidecar (modified or truncated)")
    sub = tmp_path / "other"
    sub.mkdir()
    e2, s2 = fake_engine(sub, key)
    s2.write_text("{not json")
    assert cache_lookup(e2, s2, key)[0] is None
    s2.unlink()
    assert cache_lookup(e2, s2, key)[0] is None
    e2.unlink()
    assert cache_lookup(e2, s2, key) == (None, "no cached engine")


def test_environment_mismatch_names_the_differences():
    side = {"key": engine_key(SHA, ENV, OPTS)}
    assert environment_mismatch(side, ENV) == []
    diff = environment_mismatch(side, {**ENV, "tensorrt": "11.0.0", "compute_capability": "8.0"})
    assert any("TensorRT 10.14.1 (engine) vs 11.0.0 (here)" in d for d in diff)
    assert any("compute capability" in d for d in diff) and len(diff) == 2
    assert key_differences({"a": 1, "build_options": {"x": 1}}, {"a": 2, "build_options": {"x": 2}}) == ["a", "build option x"]


def test_profiles_static_and_dynamic():
    static = [{"name": "label", "shape": [1, 36, 256, 512]}]
    assert _profiles(static, None) is None
    with pytest.raises(UserError, match="static ONNX"):
        _profiles(static, {"label": ((1, 36, 256, 512),) * 3})
    dyn = [{"name": "label", "shape": ["batch", 36, "16*h", "16*w"]}]
    with pytest.raises(UserError, match="min/opt/max"):
        _profiles(dyn, None)
    shapes = dynamic_profile(36, [(512, 1024), (256, 512), (1024, 2048)], batch=2)
    assert shapes == ((1, 36, 256, 512), (2, 36, 512, 1024), (2, 36, 1024, 2048))
    assert _profiles(dyn, {"label": shapes}) == {"label": [list(s) for s in shapes]}
    with pytest.raises(UserError, match="min <= opt <= max"):
        _profiles(dyn, {"label": (shapes[2], shapes[1], shapes[0])})
    with pytest.raises(UserError, match="fixed to 36"):
        _profiles(dyn, {"label": tuple((s[0], 35, s[2], s[3]) for s in shapes)})


def test_status_says_what_is_missing_and_how_to_get_it():
    from exporters import trt_flavours as F

    ok, reason = trt_status()
    if ok:
        pytest.skip(f"TensorRT is usable here: {reason}")
    installed = [f for f in (F.TENSORRT, F.RTX) if F.probe(f.name)[0] is not None]
    assert "pip install 'asapbench[trt]'" in reason and "NVIDIA GPU" in reason
    if not installed:
        assert "'tensorrt' is not importable" in reason and "asapbench[trt-rtx]" in reason
    else:  # installed but no GPU: names the flavour, and that engines can still be built where it builds without one
        assert installed[0].label in reason and "no CUDA GPU" in reason
        assert ("can still be built here" in reason) == installed[0].gpu_free_build
    assert ("no CUDA GPU" in reason) == (not torch.cuda.is_available())


def test_engine_functions_refuse_cleanly_without_tensorrt(tmp_path):
    from exporters import trt_flavours as F
    from exporters.trt import TrtRunner, build_engine

    if any(F.probe(f)[0] is not None for f in F.FLAVOURS):
        with pytest.raises(UserError, match="ONNX file not found"):
            build_engine(tmp_path / "m.onnx")
        with pytest.raises(UserError, match="engine file not found"):
            TrtRunner(tmp_path / "m.engine")
        return
    with pytest.raises(UserError, match="asapbench\\[trt\\]"):
        build_engine(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="asapbench\\[trt\\]"):
        TrtRunner(tmp_path / "m.engine")


# ---------------------------------------------------------------------------------------------
# real TensorRT (skipped unless tensorrt imports and a GPU is present)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    from asapbench.weights import realistic_model
    from exporters.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("trt")
    g = realistic_model("asapnet-tiny", 32, 64, "tiny", seed=0)
    return g, out, {p: export_onnx(g, 32, 64, out, precision=p).onnx_path for p in ("fp32", "fp16")}


def _psnr(ref, got):
    return 10 * np.log10(4.0 / max(float(np.mean((ref.astype(np.float64) - got) ** 2)), 1e-30))


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_runs_and_is_cached(tiny_exports, precision):
    from exporters.trt import TrtRunner, build_engine

    g, out, paths = tiny_exports
    r = build_engine(paths[precision], out, workspace_gb=1.0)
    assert not r.reused and r.engine_path.is_file()
    side = json.loads(r.sidecar_path.read_text())
    for f in ("tensorrt", "gpu_name", "compute_capability", "cuda_runtime"):
        assert side["environment"][f]
    assert side["onnx_sha256"] == json.loads(paths[precision].with_suffix(".json").read_text())["onnx_sha256"]
    assert side["build_seconds"] > 0 and side["build_options"]["strongly_typed"] is True
    assert build_engine(paths[precision], out, workspace_gb=1.0).reused
    assert not build_engine(paths[precision], out, workspace_gb=2.0).reused  # other options: other engine

    x = example_input(g, 1, 32, 64, seed=9)
    with torch.inference_mode():
        ref = g(x).numpy()
    runner = TrtRunner(r.engine_path)
    got = runner.infer(x.numpy())
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert _psnr(ref, got) >= 40
    runner.bind(x.cuda())
    runner.infer_bound()
    torch.cuda.synchronize()
    assert np.allclose(runner.output.float().cpu().numpy(), got, atol=1e-5)


@pytest.mark.trt
def test_dynamic_engine_takes_every_size_of_its_profile(tmp_path):
    from exporters.onnx_export import export_onnx
    from exporters.trt import TrtRunner, build_engine

    torch.manual_seed(0)
    g = asapbench.create_generator("asapnet-tiny", "tiny")
    r = export_onnx(g, 32, 64, tmp_path, dynamic=True)
    shapes = dynamic_profile(g.input_nc, [(32, 64), (64, 128)], batch=2)
    e = build_engine(r.onnx_path, tmp_path, dynamic_shapes={"label": shapes})
    runner = TrtRunner(e.engine_path)
    for b, h, w in ((1, 32, 64), (2, 64, 128), (1, 48, 96)):
        x = example_input(g, b, h, w, seed=1)
        with torch.inference_mode():
            ref = g(x).numpy()
        assert _psnr(ref, runner.infer(x.numpy())) >= 40
    with pytest.raises(UserError, match="does not accept input shape"):
        runner.bind(example_input(g, 1, 128, 128).cuda())


@pytest.mark.trt
def test_corrupt_or_foreign_engines_are_refused(tiny_exports, tmp_path):
    from exporters.trt import TrtRunner, build_engine

    _, out, paths = tiny_exports
    r = build_engine(paths["fp16"], out, workspace_gb=1.0)
    bad = tmp_path / "bad.engine"
    bad.write_bytes(r.engine_path.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot load engine"):
        TrtRunner(bad)
    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(r.engine_path.read_bytes())
    side = json.loads(r.sidecar_path.read_text())
    side["key"]["tensorrt"] = "9.0.0"
    Path(str(foreign) + ".json").write_text(json.dumps(side))
    with pytest.raises(UserError, match="built for another setup"):
        TrtRunner(foreign)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(UserError, match="not a valid ONNX|cannot parse"):
        build_engine(junk, tmp_path)


@pytest.mark.trt
def test_pycuda_buffers_give_the_same_output(tiny_exports):
    pytest.importorskip("pycuda")
    from exporters.trt import TrtRunner, build_engine

    g, out, paths = tiny_exports
    r = build_engine(paths["fp32"], out, workspace_gb=1.0)
    x = example_input(g, 1, 32, 64, seed=2).numpy()
    a = TrtRunner(r.engine_path).infer(x)
    b = TrtRunner(r.engine_path, buffers="pycuda").infer(x)
    assert np.allclose(a, b, atol=1e-5)
