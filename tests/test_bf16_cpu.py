"""bf16 on the CPU: the capability probe, the torch bf16 cell and its parity gate, the rows of the backends that
cannot time it (onnxruntime; a CPU without bf16), and `profile --precision bf16`.

The probe is monkeypatched where a test needs one outcome, so both paths run on every machine; the
real bf16 cells skip (with the probe's reason) where this CPU has no AVX-512 BF16 / AMX. Nothing is timed
against a bound, and outputs are judged by the PSNR bound only (never exact bf16 values, which depend on
the CPU's kernels).
"""

from __future__ import annotations

import json

import pytest
import torch

from asapbench.bench import backends as B
from asapbench.bench import system
from asapbench.commands.run import build_config, run_benchmark
from asapbench.report import markdown, read_csv

FAST = dict(warmup=1, iters=2, min_seconds=0.0, e2e_iters=1, export_check=False, progress=False)
#: asapnet-tiny at 32x64 computes within ~44 dB of fp32 in bf16 (gate: 40 dB)
TINY, RES = "asapnet-tiny", "32x64"

HAS_BF16, WHY_NOT = system.cpu_bf16_support()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason=f"this CPU cannot run the real bf16 cell: {WHY_NOT}")


def _run(tmp_path, **kw):
    return run_benchmark(out=tmp_path / "out", cache_dir=tmp_path / "cache", **{**FAST, **kw})


@pytest.fixture
def bf16_cpu(monkeypatch):
    """The probe says yes (for tests that never reach a bf16 kernel)."""
    monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "CPU flags: avx512_bf16 (test)"))


# --------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, ok", [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_fp16", True),
    ("fpu sse avx2 amx_tile amx_bf16 amx_int8", True),
    ("fpu sse avx2 avx512f avx512bw", False),
    ("fpu sse avx2", False),
])
def test_probe_reads_the_cpu_flags(flags, ok):
    text = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    got, why = system.cpu_bf16_support(text)
    assert got is ok
    if ok:
        assert "bf16" in why
    else:
        assert "avx512_bf16" in why and "amx_bf16" in why and "--precision fp32" in why


def test_probe_without_flags_asks_torch_or_says_unknown(monkeypatch):
    # no flags line (not Linux): torch's own checks decide; without them the answer is "unknown" = unsupported
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert system.cpu_bf16_support("") == (True, "torch.cpu reports amx_bf16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    ok, why = system.cpu_bf16_support("")
    assert not ok and "neither" in why
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    ok, why = system.cpu_bf16_support("")
    assert not ok and "cannot tell" in why


# --------------------------------------------------------------------------------------------
# the backend table
# --------------------------------------------------------------------------------------------
def test_table_bf16_cells(bf16_cpu):
    assert B.unsupported_reason("torch", "cpu", "bf16") is None
    assert B.unsupported_reason("torch-compile", "cpu", "bf16") is None
    ort = B.unsupported_reason("onnxruntime", "cpu", "bf16")
    assert "Conv" in ort and "InstanceNormalization" in ort and "--backends torch" in ort
    assert "bf16" in B.unsupported_reason("tensorrt", "cpu", "bf16")
    assert "CUDA only" in B.unsupported_reason("torch", "cpu", "fp16")  # fp16 on the CPU stays refused
    assert "bf16" in B.unsupported_reason("torch", "cuda", "bf16")  # bf16 is a CPU precision here
    assert build_config(models=[TINY], precision=["bf16"], device="cpu").precisions == ["bf16"]
    assert build_config(models=[TINY], device="cpu").precisions == ["fp32"]  # default unchanged


def test_cpu_without_bf16_gives_unsupported_rows(tmp_path, monkeypatch):
    why = "bf16 on the CPU needs the avx512_bf16 or amx_bf16 instructions; this CPU (test) has neither"
    monkeypatch.setattr(system, "cpu_bf16_support", lambda: (False, why))
    rows = _run(tmp_path, models=[TINY], res=[RES], backends=["torch", "torch-compile"], precision=["fp32", "bf16"])
    got = {(r.backend, r.precision): r for r in rows}
    assert got[("torch", "fp32")].status == "ok"
    for backend in ("torch", "torch-compile"):
        r = got[(backend, "bf16")]
        assert (r.status, r.note, r.ms_median) == ("unsupported", why, None)
    assert "*unsupported*" in (tmp_path / "out" / "bench.md").read_text()


def test_onnxruntime_bf16_is_an_unsupported_row(tmp_path, bf16_cpu):
    rows = _run(tmp_path, models=[TINY], res=[RES], backends=["onnxruntime"], precision=["bf16"])
    (r,) = rows
    assert r.status == "unsupported" and r.precision == "bf16" and r.ms_median is None
    assert "no bfloat16 kernel for Conv" in r.note


def test_onnxruntime_really_lacks_cpu_bf16_kernels():
    """The claim in the onnxruntime row, checked against the installed onnxruntime: a one-node bf16 Conv /
    InstanceNormalization graph (opset 22, where ONNX allows bfloat16) does not load on the CPU provider.
    If this fails, onnxruntime gained the kernels: revisit backends._ORT_CPU_BF16."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper

    def bf16(name, shape):
        return helper.make_tensor(name, TensorProto.BFLOAT16, shape, np.zeros(int(np.prod(shape)), np.uint16).tobytes(),
                                  raw=True)

    for op, inits, attrs in (("Conv", [bf16("w", [4, 4, 3, 3])], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
                             ("InstanceNormalization", [bf16("s", [4]), bf16("b", [4])], {})):
        node = helper.make_node(op, ["x", *[t.name for t in inits]], ["y"], **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 4, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4, 8, 8])], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
        onnx.checker.check_model(model)  # a valid graph: only the kernel is missing
        with pytest.raises(Exception, match=f"Could not find an implementation for {op}"):
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# the torch bf16 cell and its gate
# --------------------------------------------------------------------------------------------
@needs_bf16
def test_torch_bf16_cell_passes_the_gate_and_says_bf16(tmp_path):
    rows = _run(tmp_path, models=[TINY], res=[RES], backends=["torch"], precision=["fp32", "bf16"])
    fp32, bf16 = rows
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert bf16.status == "ok", bf16.note
    assert bf16.ms_median > 0 and bf16.e2e_ms_median > 0
    assert "cast to bfloat16" in bf16.note and "gate vs fp32 torch passed" in bf16.note
    psnr = float(bf16.note.split("PSNR ")[1].split(" dB")[0])
    assert psnr >= 40.0
    out = tmp_path / "out"
    assert [r.precision for r in read_csv(out / "bench.csv")] == ["fp32", "bf16"]
    assert [r["precision"] for r in json.loads((out / "bench.json").read_text())["rows"]] == ["fp32", "bf16"]
    assert f"| {TINY} | torch | bf16 | cpu |" in (out / "bench.md").read_text()


@needs_bf16
def test_torch_bf16_end_to_end_returns_float32():
    from asapbench.bench.sweep import build_model, plan_models
    from asapbench.inputs import example_input

    (plan,) = plan_models([TINY], [(32, 64)])
    model = build_model(plan, {}, 0)
    cell = B.Cell(model=model, x=example_input(model, 1, 32, 64), height=32, width=64, batch=1, backend="torch",
                  precision="bf16", device="cpu")
    runner = B.make_runner(cell)
    runner.prepare()
    with runner:
        out = runner.run_e2e()
        assert runner.info["gate"]["passed"] and runner.info["gate"]["psnr_db"] >= 40.0
    assert out.dtype.name == "float32" and out.shape == (1, 3, 32, 64)
    assert next(model.parameters()).dtype == torch.float32  # the shared fp32 model is untouched


def _corrupt_bf16_output(monkeypatch, how):
    """Corrupt the generator's output only when it runs in bf16 (the fp32 reference stays right): a forward
    hook, which the runner's deep copy of the model keeps."""
    from asapbench.bench import sweep as S

    real = S.build_model

    def hook(module, inputs, out):
        if out.dtype != torch.bfloat16:
            return None
        if how == "nan":
            out = out.clone()
            out[..., 0, 0] = float("nan")
            return out
        noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)) * 0.1  # ~26 dB
        return (out.float() + noise).to(out.dtype)

    def build(plan, ckpts, seed):
        m = real(plan, ckpts, seed)
        m.register_forward_hook(hook)
        return m

    monkeypatch.setattr(S, "build_model", build)


@pytest.mark.parametrize("how, words", [("nan", ["NaN/Inf values"]), ("noise", ["PSNR", "< 40 dB"])])
def test_gate_fails_on_a_corrupted_bf16_output(tmp_path, monkeypatch, how, words):
    if not HAS_BF16:  # the gate is the same code on any CPU; the probe is forced so that the cell runs
        monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "forced for the gate test"))
    _corrupt_bf16_output(monkeypatch, how)
    rows = _run(tmp_path, models=[TINY], res=[RES], backends=["torch"], precision=["fp32", "bf16"])
    fp32, bf16 = rows
    assert fp32.status == "ok"  # the hook leaves fp32 alone
    assert bf16.status == "error" and bf16.ms_median is None and bf16.e2e_ms_median is None
    assert bf16.note.startswith("bf16 parity gate failed against fp32 torch")
    # both forms were judged (the corruption is on the output, so the mixed variant fails too)
    assert "model and input cast to bfloat16 (not autocast): " in bf16.note
    assert "pixelwise stream in bf16, low-res stream in fp32: " in bf16.note
    for w in words:
        assert w in bf16.note
    assert "--precision fp32" in bf16.note and "(at " not in bf16.note


# --------------------------------------------------------------------------------------------
# ASAP-Net's mixed variant: the pixelwise stream in bf16, the low-res stream in fp32
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["onehot", "labels"])
def test_mixed_variant_is_fp32_lowres_then_bf16_pixelwise(mode):
    """The variant's output is exactly the fp32 low-res stream followed by the pixelwise stream on the bf16-cast
    parameters (the same ops, so equal bit for bit on any CPU); its weights stay fp32 and the model it came
    from is untouched."""
    from asapbench.inputs import example_input
    from asapbench.registry import create_generator

    torch.manual_seed(0)
    m = create_generator(TINY).eval().set_input_mode(mode)
    what, mixed = m.mixed_precision_variant(torch.bfloat16)
    assert what == "pixelwise stream in bf16, low-res stream in fp32"
    assert m.pixelwise_dtype is None and mixed.pixelwise_dtype is torch.bfloat16
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    x = example_input(m, 1, 32, 64)
    with torch.inference_mode():
        got = mixed(x)
        onehot = m.model_input(x)
        params = m.lowres(onehot)
        assert params.dtype == torch.float32
        hr = onehot[:, :-1] if m.lr_instance else onehot
        if mode == "labels":
            want = m.pixelwise_labels(x, onehot.bfloat16(), params.bfloat16())
        else:
            want = m.pixelwise(hr.bfloat16(), params.bfloat16())
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_baselines_have_no_mixed_variant():
    from asapbench.registry import create_generator

    assert create_generator("pix2pixhd-tiny").mixed_precision_variant(torch.bfloat16) is None


def _noise_if_bf16(module, inputs, out):
    """Forward hook: noise as large as the output itself when the module runs in bf16 (fp32 passes through)."""
    if out.dtype != torch.bfloat16:
        return None
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)) * out.float().std()
    return (out.float() + noise).to(out.dtype)


def _corrupt_bf16_lowres(monkeypatch):
    """Corrupt ASAP-Net's low-res stream output when it runs in bf16 only: the whole-model cast then fails the
    gate and the mixed variant (low-res stream in fp32) does not see the noise."""
    from asapbench.bench import sweep as S

    real = S.build_model

    def build(plan, ckpts, seed):
        m = real(plan, ckpts, seed)
        m.lowres_stream.register_forward_hook(_noise_if_bf16)
        return m

    monkeypatch.setattr(S, "build_model", build)


@pytest.mark.parametrize("backend", ["torch", "torch-compile"])
def test_gate_falls_back_to_the_mixed_variant(tmp_path, monkeypatch, backend):
    if not HAS_BF16:  # the fallback is the same code on any CPU; the probe is forced so that the cell runs
        monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "forced for the fallback test"))
    if backend == "torch-compile":
        pytest.importorskip("torch._inductor")
    _corrupt_bf16_lowres(monkeypatch)
    rows = _run(tmp_path, models=[TINY], res=[RES], backends=[backend], precision=["bf16"])
    (row,) = rows
    assert row.status == "ok", row.note
    assert row.precision == "bf16" and row.ms_median > 0 and row.e2e_ms_median > 0
    assert "bf16: pixelwise stream in bf16, low-res stream in fp32 (model and input cast to bfloat16 (not autocast) " \
           "failed the gate: PSNR" in row.note
    assert "gate vs fp32 torch passed" in row.note


def test_profile_cast_auto_reports_what_it_profiled(monkeypatch):
    """profile --precision bf16 judges what `run` judges, in the same order, and says which form it profiled."""
    from asapbench.bench import profile as P

    if not HAS_BF16:
        monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "forced for the profile test"))
    real = P.build_model

    def build(*a, **kw):
        m = real(*a, **kw)
        m.lowres_stream.register_forward_hook(_noise_if_bf16)
        return m

    monkeypatch.setattr(P, "build_model", build)
    r = P.run_profile(TINY, RES, backend="torch", precision="bf16", threads=1, iters=1, gemm_size=128)
    par = r["bf16_vs_fp32"]
    assert par["passed"] and par["policy"] == "pixelwise stream in bf16, low-res stream in fp32"
    assert [t["passed"] for t in par["tried"]] == [False, True]
    prec = {s["stage"]: s["precision"] for s in r["stages"]}
    assert prec == {"input encoding": "fp32", "low-res stream": "fp32", "pixelwise stream": "bf16"}
    assert r["gemm_fp32"]["gflops"] > 0 and "bf16" in r["gemm"]["op"]
    whole = P.run_profile(TINY, RES, backend="torch", precision="bf16", threads=1, iters=1, gemm_size=128, cast="whole")
    assert not whole["bf16_vs_fp32"]["passed"] and "cast to bfloat16" in whole["bf16_vs_fp32"]["policy"]
    assert "gemm_fp32" not in whole


# --------------------------------------------------------------------------------------------
# reports: speed-ups compare like with like
# --------------------------------------------------------------------------------------------
def test_speedups_never_divide_bf16_by_fp32():
    from asapbench.record import BenchRow

    def row(model, precision, ms):
        return BenchRow(model=model, backend="torch", precision=precision, device="cpu", height=32, width=64,
                        status="ok", ms_median=ms, ms_mean=ms, cov=0.01)

    rows = [row("asapnet-tiny", "fp32", 4.0), row("pix2pixhd-tiny", "bf16", 2.0), row("pix2pixhd-tiny", "fp32", 8.0)]
    md = markdown(rows)
    speed = md.split("## ASAP-Net speed-up")[1].split("## Fastest")[0]
    assert "| asapnet-tiny vs pix2pixhd-tiny | torch | fp32 | cpu | 2.00x |" in speed
    assert "bf16" not in speed  # no ASAP-Net bf16 row: pix2pixHD bf16 is compared with nothing


# --------------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------------
@needs_bf16
def test_profile_bf16_uses_a_bf16_gemm_rate():
    from asapbench.bench.profile import run_profile

    r = run_profile(TINY, RES, backend="torch", precision="bf16", threads=1, iters=2, gemm_size=128)
    assert r["precision"] == "bf16" and "bf16" in r["gemm"]["op"] and r["gemm"]["gflops"] > 0
    assert r["bf16_vs_fp32"]["passed"] and r["bf16_vs_fp32"]["psnr_db"] >= 40.0
    assert r["stage_output_max_abs_vs_model"] < 1e-2  # stages and model(x): the same bf16 ops
    assert all(s["ms"] > 0 for s in r["stages"])


def test_profile_bf16_refusals_are_user_errors(monkeypatch):
    from asapbench.bench.profile import run_profile
    from asapbench.errors import UserError

    with pytest.raises(UserError, match="no bfloat16 kernel for Conv.*--backend torch"):
        run_profile(TINY, RES, backend="onnxruntime", precision="bf16", gemm_size=128)
    monkeypatch.setattr(system, "cpu_bf16_support", lambda: (False, "no bf16 on this test CPU"))
    with pytest.raises(UserError, match="no bf16 on this test CPU"):
        run_profile(TINY, RES, backend="torch", precision="bf16", gemm_size=128)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
def test_cli_bf16_refusals_and_help(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import assert_one_line_error

    repo = Path(__file__).resolve().parents[1]

    def cli(*args):
        env = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "1000"}  # help on one line per option
        return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=repo, capture_output=True, text=True,
                              timeout=300, check=False, env=env)

    r = cli("run", "--models", TINY, "--res", RES, "--backends", "onnxruntime", "--precision", "bf16",
            "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "onnxruntime bf16 cpu: unsupported: onnxruntime's CPUExecutionProvider has no bfloat16 kernel" in r.stderr
    assert_one_line_error(cli("profile", "--model", TINY, "--res", RES, "--backend", "onnxruntime", "--precision", "bf16"),
                          "bfloat16", "--backend torch")
    assert_one_line_error(cli("run", "--models", TINY, "--precision", "bf32", "--out", str(tmp_path / "o")), "bf32", "bf16")
    help_text = " ".join(cli("run", "--help").stdout.split())
    assert "bf16" in help_text and "AVX-512 BF16" in help_text
