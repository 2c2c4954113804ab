"""OrtRunner: real onnxruntime sessions, IO binding, and no silent fallback to the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import asapbench
from asapbench.errors import UserError
from asapbench.inputs import example_input
from exporters.onnx_export import export_onnx
from exporters.ort import OrtRunner, ProviderUnavailable, available_providers

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    g = asapbench.create_generator("asapnet-tiny", "tiny")
    r = export_onnx(g, 32, 64, tmp_path_factory.mktemp("ort"), check=False)
    return g, r.onnx_path


def test_cpu_runner_matches_torch_and_bound_runs(tiny_onnx):
    g, path = tiny_onnx
    runner = OrtRunner(path, provider="cpu", threads=1)
    assert runner.providers == ["CPUExecutionProvider"]
    x = example_input(g, 1, 32, 64, seed=4)
    with torch.inference_mode():
        ref = g(x).numpy()
    y = runner.infer(x.numpy())
    assert y.shape == (1, 3, 32, 64) and np.abs(y - ref).max() <= 1e-4
    runner.bind(x)  # a torch tensor on the CPU: kept as numpy
    runner.infer_bound()
    assert isinstance(runner.output, np.ndarray) and np.array_equal(runner.output, y)


def test_infer_bound_needs_bind(tiny_onnx):
    _, path = tiny_onnx
    with pytest.raises(RuntimeError, match="bind"):
        OrtRunner(path).infer_bound()


def test_available_providers_lists_cpu():
    assert "CPUExecutionProvider" in available_providers()


def test_missing_gpu_provider_is_refused_not_replaced(tiny_onnx):
    _, path = tiny_onnx
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu"):
        OrtRunner(path, provider="cuda")
    with pytest.raises(ProviderUnavailable, match="TensorrtExecutionProvider"):
        OrtRunner(path, provider="tensorrt")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_fallback_to_cpu_is_detected(tiny_onnx, monkeypatch):
    """A provider that is listed but fails to load makes onnxruntime fall back to the CPU quietly."""
    _, path = tiny_onnx
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("the CUDA provider is really available here")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable, match="fell back"):
        OrtRunner(path, provider="cuda")


def test_bad_arguments_are_user_errors(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    with pytest.raises(UserError, match="unknown onnxruntime provider"):
        OrtRunner(path, provider="rocm")
    with pytest.raises(UserError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")
    trunc = tmp_path / "truncated.onnx"
    trunc.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    with pytest.raises(UserError, match="not a valid ONNX"):
        OrtRunner(trunc)


@pytest.mark.gpu
def test_cuda_runner_io_binding_matches_torch(tiny_onnx):
    g, path = tiny_onnx
    if "CUDAExecutionProvider" not in available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    runner = OrtRunner(path, provider="cuda")
    assert runner.providers[0] == "CUDAExecutionProvider"
    x = example_input(g, 1, 32, 64, seed=4)
    with torch.inference_mode():
        ref = g(x).numpy()
    runner.bind(x.cuda())
    runner.infer_bound()
    torch.cuda.synchronize()
    assert runner.output.is_cuda and np.abs(runner.output.cpu().numpy() - ref).max() <= 1e-3
    assert np.abs(runner.infer(x.numpy()) - ref).max() <= 1e-3


def test_install_conflict_names_the_clean_switch(monkeypatch):
    from importlib import metadata

    from exporters.ort import install_conflict

    class Dist:
        def __init__(self, name):
            self.metadata = {"Name": name}

    monkeypatch.setattr(metadata, "distributions", lambda: [Dist("onnxruntime"), Dist("numpy")])
    assert install_conflict() is None
    monkeypatch.setattr(metadata, "distributions", lambda: [Dist("onnxruntime"), Dist("onnxruntime_gpu")])
    msg = install_conflict()
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in msg and "pip install onnxruntime-gpu" in msg


def _session_settings(monkeypatch) -> list[dict]:
    """Record the options of every onnxruntime session created from now on."""
    made: list[dict] = []
    real = ort.InferenceSession

    def recording(*args, **kwargs):
        sess = real(*args, **kwargs)
        o = sess.get_session_options()
        made.append({k: getattr(o, k) for k in ("enable_mem_pattern", "enable_cpu_mem_arena", "log_severity_level",
                                                "intra_op_num_threads", "graph_optimization_level")})
        return sess

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return made


def test_profile_measures_under_the_session_settings_of_run(tiny_onnx, monkeypatch):
    """`profile --backend onnxruntime` and `run`'s onnxruntime runner open their sessions with the same options."""
    from asapbench.bench.profile import profile_onnxruntime

    g, path = tiny_onnx
    made = _session_settings(monkeypatch)
    OrtRunner(path, provider="cpu", threads=1).close()
    profile_onnxruntime(g, example_input(g, 1, 32, 64, seed=1), iters=1, threads=1, warmup=0)
    assert len(made) == 2
    assert made[0] == made[1]
    assert made[0]["enable_mem_pattern"] is False and made[0]["intra_op_num_threads"] == 1
