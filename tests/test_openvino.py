"""The OpenVINO backend (``--backends openvino``): fp32 rows pinned to f32 and equal to onnxruntime, the bf16
gate, the row when OpenVINO is absent, and its compiled-model cache.

Outputs are compared with tolerances and PSNR bounds only (never exact values, which depend on the CPU's
kernels); a bf16 outcome is never fixed: the test checks that the row agrees with the PSNR it records.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asapbench.bench import backends as B
from asapbench.bench import system
from asapbench.commands.run import run_benchmark
from asapbench.report import read_csv

pytest.importorskip("onnxruntime", reason="the gated ONNX export needs onnxruntime")
pytest.importorskip("openvino", reason="install asapbench[openvino] (or [test]) to test the OpenVINO backend")

REPO = Path(__file__).resolve().parents[1]
TINY = ["asapnet-tiny", "pix2pixhd-tiny", "spade-tiny"]
RES = "64x128"
FAST = dict(warmup=1, iters=2, min_seconds=0.0, e2e_iters=1, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ov-cache")


def _cell(model, x, backend, precision, cache):
    return B.Cell(model=model, x=x, height=x.shape[2], width=x.shape[3], batch=1, backend=backend, precision=precision,
                  device="cpu", threads=1, cache_dir=cache, export_check=True)


def _output(cell):
    runner = B.make_runner(cell)
    runner.prepare()
    with runner:
        return np.asarray(runner.run_e2e()), runner


@pytest.mark.parametrize("name", TINY)
def test_fp32_output_equals_onnxruntime_and_runs_in_f32(name, cache, one_thread):
    from asapbench.inputs import example_input
    from asapbench.weights import realistic_model

    h, w = (int(v) for v in RES.split("x"))
    model = realistic_model(name, h, w, None, 0)
    x = example_input(model, 1, h, w, seed=0)
    ref, _ = _output(_cell(model, x, "onnxruntime", "fp32", cache))
    got, runner = _output(_cell(model, x, "openvino", "fp32", cache))
    assert got.shape == ref.shape and np.isfinite(got).all()
    # two fp32 runtimes on the same gated graph: kernel-order rounding only (onnxruntime's CPU InstanceNorm alone
    # is ~1e-4 off at this size, README "Export and parity"); bf16 would be ~1e-2 off
    assert float(np.abs(got - ref).max()) < 1e-3
    assert runner.info["inference_precision"] == "f32" and runner.provider == "CPU (f32)"
    # the compiled model is cached under the export's folder, keyed by its file name and hash
    sha = runner.exported.sidecar["onnx_sha256"]
    folder = Path(cache) / "openvino" / f"{runner.exported.onnx_path.stem}.{sha[:12]}"
    assert runner.info["cache_dir"] == str(folder) and any(folder.iterdir())


def test_fp32_rows_are_ok_and_record_f32(tmp_path, cache):
    rows = run_benchmark(out=tmp_path / "out", cache_dir=cache, models=TINY, res=[RES], backends=["openvino"],
                         threads=1, **FAST)
    assert [(r.model, r.backend, r.status) for r in rows] == [(m, "openvino", "ok") for m in TINY], \
        [r.note for r in rows]
    for r in rows:
        assert r.provider == "CPU (f32)" and "inference precision f32" in r.note and r.ms_median > 0
        assert r.threads == 1


def test_openvino_is_not_a_default_backend():
    assert "openvino" not in B.default_backends("cpu")
    assert "--device cpu" in B.unsupported_reason("openvino", "cuda", "fp32")


def _psnr(note: str) -> float:
    m = re.search(r"PSNR (-?[\d.]+|inf) dB", note)
    assert m, note
    return float(m.group(1))


@pytest.mark.parametrize("noise, expect", [(0.0, "ok"), (0.05, "error")])  # 0.05 std: PSNR ~32 dB
def test_bf16_row_follows_its_gate(tmp_path, cache, monkeypatch, noise, expect):
    """The gate decides: an ok row's PSNR meets 40 dB, an error row's does not, and each names it. The probe
    and the compiled precision are forced to bf16 (this test runs on any CPU); the output the gate judges gets
    ``noise`` added (seeded), so both outcomes of the gate are reached."""
    from asapbench.bench import runner_openvino as R

    monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "forced for the gate test"))
    monkeypatch.setattr(R, "effective_precision", lambda compiled: "bf16")
    run_e2e = R.OpenVINORunner.run_e2e
    rng = np.random.default_rng(0)

    def noisy(self):
        out = np.asarray(run_e2e(self))
        return out + noise * rng.standard_normal(out.shape).astype(out.dtype)

    monkeypatch.setattr(R.OpenVINORunner, "run_e2e", noisy)
    (row,) = run_benchmark(out=tmp_path / "out", cache_dir=cache, models=["asapnet-tiny"], res=[RES],
                           backends=["openvino"], precision=["bf16"], threads=1, **FAST)
    psnr = _psnr(row.note)
    assert row.status == expect, row.note
    assert (row.status == "ok") == (psnr >= 40.0), row.note
    if row.status == "ok":
        assert "gate vs fp32 torch passed" in row.note and row.ms_median > 0 and row.provider == "CPU (bf16)"
    else:
        assert "parity gate failed" in row.note and row.ms_median is None


def test_bf16_compiled_to_another_precision_is_unsupported(tmp_path, cache, monkeypatch):
    """A bf16 cell that OpenVINO compiles to f32 (its silent choice on CPUs without native bf16) is not timed."""
    from asapbench.bench import runner_openvino as R

    monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "forced"))
    monkeypatch.setattr(R, "effective_precision", lambda compiled: "f32")
    (row,) = run_benchmark(out=tmp_path / "out", cache_dir=cache, models=["asapnet-tiny"], res=[RES],
                           backends=["openvino"], precision=["bf16"], threads=1, **FAST)
    assert row.status == "unsupported" and "inference precision f32" in row.note and row.ms_median is None


HAS_BF16, WHY_NOT = system.cpu_bf16_support()


@pytest.mark.skipif(not HAS_BF16, reason=f"this CPU has no native bf16: {WHY_NOT}")
def test_real_bf16_row_is_gated(tmp_path, cache):
    (row,) = run_benchmark(out=tmp_path / "out", cache_dir=cache, models=["pix2pixhd-tiny"], res=[RES],
                           backends=["openvino"], precision=["bf16"], threads=1, **FAST)
    assert row.status in ("ok", "error"), row.note
    assert (row.status == "ok") == (_psnr(row.note) >= 40.0), row.note


def test_absent_openvino_is_an_unsupported_row_with_the_install_hint(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['openvino'] = None\n"
        "from asapbench.cli import main\n"
        f"main(['run', '--models', 'asapnet-tiny', '--res', '32x64', '--backends', 'torch,openvino', '--warmup', '0',"
        f" '--iters', '1', '--min-seconds', '0', '--e2e-iters', '0', '--no-progress', '--out', {str(tmp_path / 'out')!r},"
        f" '--cache-dir', {str(tmp_path / 'cache')!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-800:]
    lines = [ln for ln in r.stderr.splitlines() if "openvino" in ln]
    assert len(lines) == 1 and "pip install 'asapbench[openvino]'" in lines[0], r.stderr
    rows = {row.backend: row for row in read_csv(tmp_path / "out" / "bench.csv")}
    assert rows["torch"].status == "ok"
    assert rows["openvino"].status == "unsupported" and "pip install 'asapbench[openvino]'" in rows["openvino"].note


# --------------------------------------------------------------------------------------------
# the machine's peak: fraction-of-peak arithmetic, bench.json / bench.md, profile JSON
# --------------------------------------------------------------------------------------------
def test_fraction_of_peak_arithmetic():
    from asapbench.bench.profile import fraction_of_peak
    from asapbench.bench.sweep import _peak_columns
    from asapbench.report import BenchRow

    assert fraction_of_peak(5e9, 0.25, 80.0) == pytest.approx((40.0, 0.5))  # 2 x 5e9 FLOP in 0.25 s = 40 GFLOP/s
    assert fraction_of_peak(5e9, 0.25, None) == (pytest.approx(40.0), None)
    assert fraction_of_peak(None, 0.25, 80.0) == (None, None) and fraction_of_peak(5e9, 0.0, 80.0) == (None, None)
    # a row: MACs per image x batch at the median time per call, against its backend's peak at its precision
    row = BenchRow(model="m", backend="torch-compile", precision="fp32", macs=3_000_000_000, batch=2, ms_median=100.0)
    peaks = {"backends": {"torch-compile": {"fp32": {"gflops": 240.0}, "bf16": {"absent": "no bf16"}}}}
    _peak_columns(row, peaks)
    assert (row.gflops, row.peak_gflops, row.peak_fraction) == (pytest.approx(120.0), 240.0, pytest.approx(0.5))
    row.precision = "bf16"
    _peak_columns(row, peaks)
    assert row.gflops == pytest.approx(120.0) and row.peak_gflops is None and row.peak_fraction is None


def test_cpu_isa_reads_the_flags():
    text = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 sse4_2\n"
    assert system.cpu_isa(text) == {"flags": ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"],
                                    "source": "/proc/cpuinfo"}
    assert system.cpu_isa("processor\t: 0\n") == {"flags": [], "source": None}


def test_onnxruntime_has_no_bf16_peak(monkeypatch):
    from asapbench.bench.profile import gemm_rate

    monkeypatch.setattr(system, "cpu_bf16_support", lambda: (True, "forced"))
    rec = gemm_rate("bf16", 64, backend="onnxruntime")
    assert "gflops" not in rec and "bfloat16" in rec["absent"]


def test_run_records_the_peaks_and_each_rows_fraction(tmp_path, cache, monkeypatch):
    import json

    monkeypatch.setenv("ASAPBENCH_PEAK_GEMM", "256")
    rows = run_benchmark(out=tmp_path / "out", cache_dir=cache, models=["asapnet-tiny"], res=[RES],
                         backends=["torch", "openvino"], threads=1, **FAST)
    env = json.loads((tmp_path / "out" / "bench.json").read_text())["environment"]
    peaks = env["peaks"]
    assert peaks["n"] == 256 and peaks["threads"] == 1 and env["cpu_isa"] == system.cpu_isa()
    has_bf16 = system.cpu_bf16_support()[0]
    for b in ("torch", "openvino"):
        rec = peaks["backends"][b]
        assert rec["fp32"]["gflops"] > 0 and rec["fp32"]["n"] == 256
        assert ("gflops" in rec["bf16"]) == has_bf16 and (has_bf16 or rec["bf16"]["absent"])
    assert "OpenVINO" in peaks["backends"]["openvino"]["fp32"]["op"]
    for r in rows:
        assert r.status == "ok" and r.peak_gflops == peaks["backends"][r.backend]["fp32"]["gflops"]
        assert r.gflops == pytest.approx(2 * r.macs / (r.ms_median / 1e3) / 1e9)
        assert r.peak_fraction == pytest.approx(r.gflops / r.peak_gflops)
    assert read_csv(tmp_path / "out" / "bench.csv") == rows
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "GEMM peak (256x256x256, 1 thread(s))" in md and f"torch {peaks['backends']['torch']['fp32']['gflops']:.1f} / " in md
    assert f"CPU ISA: {', '.join(env['cpu_isa']['flags']) or 'unknown'}" in md


def test_profile_sets_stages_against_the_backends_own_peak(one_thread):
    from asapbench.bench.profile import run_profile

    r = run_profile("asapnet-tiny", "32x64", backend="onnxruntime", iters=1, warmup=0, gemm_size=128)
    assert "onnxruntime MatMul" in r["gemm"]["op"] and "MLAS" in r["gemm"]["library"]
    assert r["cpu_isa"] == system.cpu_isa()
    for s in r["stages"]:
        if s["gflops"]:
            assert s["fraction_of_gemm"] == pytest.approx(s["gflops"] / r["gemm"]["gflops"])


def test_bad_peak_gemm_size_is_one_line(tmp_path):
    from tests.conftest import assert_one_line_error

    env = {**__import__("os").environ, "ASAPBENCH_PEAK_GEMM": "big", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "asapbench", "run", "--models", "asapnet-tiny", "--res", "32x64",
                        "--backends", "torch", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       cwd=REPO, timeout=300, env=env)
    assert_one_line_error(r, "ASAPBENCH_PEAK_GEMM='big'", "2048")
    assert not (tmp_path / "out").exists()


def test_a_failing_peak_measurement_is_recorded_not_raised(monkeypatch):
    from asapbench.bench import profile as P

    def boom(*a, **k):
        raise RuntimeError("no GEMM today\nsecond line")

    monkeypatch.setattr(P, "gemm_rate", boom)
    peaks = P.measure_peaks(["torch"], threads=1, n=64, precisions=("fp32",))
    assert peaks["backends"]["torch"]["fp32"] == {"op": "GEMM fp32", "absent": "measurement failed: RuntimeError: no GEMM today"}
