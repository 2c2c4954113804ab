"""ASAP-Net's fused pixelwise kernel (pixelwise_impl="fused", `--pixelwise fused`; issue 17 item 5): the compiled
kernel's output against the literal formulation on every code path of the kernel (tile smaller than a block, blocks
with leftover rows, widths that are not a multiple of the vector width, batch, a channel view of the input), where
it does not run (export, autograd, bf16), and the errors of a machine without a working compiler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asapbench import create_generator
from asapbench.errors import UserError
from asapbench.inputs import example_input
from asapbench.models import fused_kernel

REPO = Path(__file__).resolve().parents[1]
needs_compiler = pytest.mark.skipif(fused_kernel.compiler() is None, reason="needs a C++ compiler (g++ or clang++)")


@pytest.fixture
def kernel_cache(tmp_path_factory, monkeypatch):
    """A fresh cache for the compiled kernel, shared by this module's tests (one build)."""
    root = tmp_path_factory.getbasetemp() / "kernel-cache"
    monkeypatch.setenv("ASAPBENCH_CACHE", str(root))
    return root


def _model(**kw):
    m = create_generator("asapnet-tiny", **kw).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():  # weights that keep the MLP's outputs away from tanh's saturation and from zero
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 / max(1, p[0].numel()) ** 0.5))
    return m


@needs_compiler
@pytest.mark.parametrize("kw,res,batch", [
    ({}, (32, 64), 2),  # 8x8 tiles: one block smaller than a block of rows
    ({"scale": 32, "hr_width": 12}, (64, 128), 1),  # 1024-pixel tiles (blocks with leftover rows), width 12
    ({"hr_width": 20, "lr_instance": True, "instance_edge": True}, (32, 64), 2),  # a channel view of the input
])
def test_fused_equals_the_reference_formulation(kernel_cache, kw, res, batch):
    """Against the float64 reference formulation, the kernel's error is of the order of the fast formulation's
    (float32 sums in another order, its own tanh), whatever the CPU's vector width."""
    m = _model(**kw)
    x = example_input(m, batch, *res, seed=3)
    with torch.no_grad():
        params = m.lowres(x)
        hr = x[:, :-1] if m.lr_instance else x
        m.pixelwise_impl = "reference"
        exact = m.double().pixelwise(hr.double(), params.double())
        m.float()
        m.pixelwise_impl = "fast"
        fast = m.pixelwise(hr, params)
        m.pixelwise_impl = "fused"
        got = m.pixelwise(hr, params)
        whole = m(x)
    assert float(exact.std()) > 0.05  # not a flat output that any kernel would match
    err, fast_err = float((got.double() - exact).abs().max()), float((fast.double() - exact).abs().max())
    assert err <= max(4 * fast_err, 2e-6), (err, fast_err)
    m.pixelwise_impl = "fast"
    with torch.no_grad():
        assert float((whole - m(x)).abs().max()) <= 2 * max(4 * fast_err, 2e-6)


@needs_compiler
def test_fused_runs_only_in_cpu_float32_inference(kernel_cache, monkeypatch):
    m = _model()
    x = example_input(m, 1, 32, 64, seed=1)
    calls = []
    real = fused_kernel.pixelwise
    monkeypatch.setattr(fused_kernel, "pixelwise", lambda *a, **k: calls.append(1) or real(*a, **k))
    m.pixelwise_impl = "fused"
    with torch.no_grad():
        m(x)
    assert calls == [1]
    m.train()
    m(x).sum().backward()  # autograd: the fast graph formulation, gradients reach the low-res stream
    assert calls == [1] and any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.lowres_stream.parameters())
    m.eval()
    with torch.no_grad():
        m.to(torch.bfloat16)(x.bfloat16())
    assert calls == [1]
    fast = _model()
    assert m.graph_variant == fast.graph_variant  # exports: the fast formulation's graph and cache key
    labels = _model().set_input_mode("labels")  # the label-map input: eager runs the kernel on the in-graph one-hot
    labels.pixelwise_impl = "fused"
    fast.set_input_mode("labels")
    xl = example_input(labels, 1, 32, 64, seed=1)
    with torch.no_grad():
        got, want = labels(xl), fast(xl)
    assert calls == [1, 1] and float((got - want).abs().max()) < 1e-5


@needs_compiler
def test_the_built_kernel_is_one_of_the_cache_s_own_files(kernel_cache):
    """`asapbench cache` lists it (and --clear would delete it): not a foreign file of the cache folder."""
    from asapbench.commands.cache import cache_listing

    fused_kernel.load()
    listing = cache_listing(kernel_cache)
    assert any(f["path"].startswith("kernels/pixelwise-") and f["path"].endswith(".so") for f in listing["files"]), listing
    assert listing["foreign"] == []


def test_no_compiler_is_a_user_error_naming_the_fix(monkeypatch):
    monkeypatch.setattr(fused_kernel, "_LIB", None)
    monkeypatch.setattr(fused_kernel, "compiler", lambda: None)
    with pytest.raises(UserError, match="no C\\+\\+ compiler.*pixelwise_impl='fast'"):
        fused_kernel.load()


def test_a_failing_build_is_one_line_exit_2_and_leaves_nothing(tmp_path):
    """`run --pixelwise fused` builds the kernel before any work: a compiler that fails is one line, exit 2."""
    fake = tmp_path / "cxx"
    fake.write_text("#!/bin/sh\necho 'fatal error: no such thing' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "CXX": str(fake), "ASAPBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "asapbench", "run", "--models", "asapnet-tiny", "--res", "32x64",
                        "--backends", "torch", "--pixelwise", "fused", "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "fused pixelwise kernel" in r.stderr and "no such thing" in r.stderr and "--pixelwise" not in r.stdout
    assert not (tmp_path / "o").exists()
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []  # no half-built library left


def test_the_cached_kernel_is_keyed_by_source_compiler_and_cpu(monkeypatch, tmp_path):
    if fused_kernel.compiler() is None:
        pytest.skip("needs a C++ compiler (g++ or clang++)")
    monkeypatch.setenv("ASAPBENCH_CACHE", str(tmp_path))
    cxx = fused_kernel.compiler()
    a = fused_kernel.library_path(cxx)
    assert a == fused_kernel.library_path(cxx) and a.parent == tmp_path / "kernels"
    monkeypatch.setattr(fused_kernel, "_cpu_flags", lambda: "flags : sse2")
    assert fused_kernel.library_path(cxx) != a


@needs_compiler
def test_run_times_the_fused_kernel_and_names_it_in_the_rows(tmp_path):
    env = {**os.environ, "ASAPBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg",
           "ASAPBENCH_PEAK_GEMM": "0"}
    probe = ("import sys, asapbench.models.fused_kernel as K\n"
             "real, calls = K.pixelwise, sys.argv[1]\n"
             "def counted(*a, **k):\n"
             "    open(calls, 'a').write('x')\n"
             "    return real(*a, **k)\n"
             "K.pixelwise = counted\n"
             "from asapbench.cli import main\n"
             "sys.argv = ['asapbench', *sys.argv[2:]]\n"
             "main()\n")
    calls = tmp_path / "calls"
    r = subprocess.run([sys.executable, "-c", probe, str(calls), "run", "--models", "asapnet-tiny", "--res", "32x64",
                        "--backends", "torch", "--pixelwise", "fused", "--warmup", "1", "--iters", "2",
                        "--min-seconds", "0", "--e2e-iters", "0", "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads((tmp_path / "o" / "latest" / "bench.json").read_text())["rows"]
    assert row["status"] == "ok" and "pixelwise_impl=fused" in row["overrides"]
    assert len(calls.read_text()) >= 3  # warm-up and timed runs went through the kernel
