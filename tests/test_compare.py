"""`asapbench compare A B` (two result sets side by side, the noise of each ratio, a CI gate) and
`asapbench report A B` naming the cells a later file replaced."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asapbench.compare import NOISE_SIGMAS, compare_rows
from asapbench.report import BenchRow, read_csv, render_all
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}


def asapbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def row(model="asapnet", h=256, w=512, ms=10.0, cov=0.02, backend="torch", status="ok", cpu="CPU A", **kw) -> BenchRow:
    timed = status == "ok"
    return BenchRow(model=model, height=h, width=w, backend=backend, provider="cpu", status=status,
                    ms_median=ms if timed else None, cov=cov if timed else None, e2e_ms_median=2 * ms if timed else None,
                    cpu_model=cpu, **kw)


def test_ratio_noise_and_verdicts_follow_the_stated_formula():
    a = [row(ms=10.0, cov=0.02), row(h=512, w=512, ms=20.0, cov=0.10), row(h=1024, w=1024, ms=40.0, cov=0.01)]
    b = [row(ms=12.0, cov=0.02, cpu="CPU B"), row(h=512, w=512, ms=22.0, cov=0.10, cpu="CPU B"),
         row(h=1024, w=1024, ms=30.0, cov=0.01, cpu="CPU B")]
    cmp = compare_rows(a, b)
    by = {c.label.split()[1]: c for c in cmp.cells}
    slow, noisy, fast = by["256x512"], by["512x512"], by["1024x1024"]
    assert slow.ratio == pytest.approx(1.2) and slow.noise == pytest.approx(math.hypot(0.02, 0.02))
    # ln(1.2) = 0.182 > 2 x 0.028; ln(1.1) = 0.095 < 2 x 0.141; ln(0.75) = -0.288, |.| > 2 x 0.014
    assert (slow.verdict, noisy.verdict, fast.verdict) == ("slower", "within noise", "faster")
    assert slow.regressed(10) and not slow.regressed(25) and not noisy.regressed(5) and not fast.regressed(0)
    assert NOISE_SIGMAS * noisy.noise > math.log(1.1)
    assert cmp.machines_a == ["CPU A"] and cmp.machines_b == ["CPU B"]
    assert [c.label for c in cmp.regressions(10)] == [slow.label]


def test_cells_in_one_set_only_untimed_cells_and_e2e_metric():
    a = [row(), row(model="spade", ms=100.0), row(model="pix2pixhd", status="oom")]
    b = [row(ms=10.0), row(model="pix2pixhd", ms=50.0), row(h=1024, w=1024)]
    cmp = compare_rows(a, b)
    assert [c.label for c in cmp.cells] == ["asapnet 256x512 torch fp32 cpu", "pix2pixhd 256x512 torch fp32 cpu"]
    assert cmp.cells[1].ratio is None and cmp.cells[1].verdict.startswith("not timed (oom / ok)")
    assert cmp.only_a == ["spade 256x512 torch fp32 cpu"] and cmp.only_b == ["asapnet 1024x1024 torch fp32 cpu"]
    e2e = compare_rows([row(ms=10.0)], [row(ms=15.0)], metric="e2e")
    assert e2e.cells[0].ratio == pytest.approx(1.5) and e2e.cells[0].noise is None
    assert e2e.cells[0].verdict == "no CoV (one run)" and not e2e.cells[0].regressed(0)


def _sets(tmp_path: Path, b_ms: float) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    render_all([row(ms=10.0), row(model="spade", ms=80.0)], a, [{"cpu_model": "CPU A"}])
    render_all([row(ms=b_ms), row(model="pix2pixhd", ms=30.0)], b, [{"cpu_model": "CPU A"}])
    return a, b


def test_cli_gate_exit_codes_and_files(tmp_path):
    a, b = _sets(tmp_path, b_ms=13.0)
    ok = asapbench("compare", str(a), str(b / "bench.csv"), "--out", str(tmp_path / "cmp"))
    assert ok.returncode == 0, ok.stderr
    assert "slower" in ok.stdout and "only in A: spade 256x512" in ok.stdout and "only in B: pix2pixhd" in ok.stdout
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| asapnet 256x512 torch fp32 cpu | 10 | 13 | 1.300 |" in md
    assert (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[1].startswith("asapnet 256x512 torch fp32 cpu,10,13,1.300")
    gate = asapbench("compare", str(a), str(b), "--fail-on-regression", "10")
    assert gate.returncode == 1, (gate.stdout, gate.stderr)
    last = [ln for ln in gate.stderr.splitlines() if ln.strip()]
    assert len(last) == 1 and "asapnet 256x512 torch fp32 cpu x1.30" in last[0] and "Traceback" not in gate.stderr
    assert asapbench("compare", str(a), str(b), "--fail-on-regression", "40").returncode == 0


@pytest.mark.parametrize("args, needle", [
    (["--metric", "p99"], "--metric"),
    (["--fail-on-regression", "-5"], "--fail-on-regression"),
    (["--fail-on-regression", "nan"], "--fail-on-regression"),
])
def test_cli_bad_options_are_one_line(tmp_path, args, needle):
    a, b = _sets(tmp_path, b_ms=10.0)
    assert_one_line_error(asapbench("compare", str(a), str(b), *args), needle)


def test_cli_missing_set_is_one_line(tmp_path):
    a, _ = _sets(tmp_path, b_ms=10.0)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(asapbench("compare", str(a), str(tmp_path / "empty")), "without a bench.csv")
    assert_one_line_error(asapbench("compare", str(tmp_path / "nope.csv"), str(a)), "no such CSV")


def test_a_real_run_compared_with_itself_is_within_noise(tmp_path):
    """A real tiny sweep against itself: every ratio exactly 1, so even a 0% gate passes."""
    out = tmp_path / "run"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--device", "cpu",
                  "--warmup", "1", "--iters", "3", "--min-seconds", "0", "--e2e-iters", "1", "--out", str(out),
                  "--cache-dir", str(tmp_path / "c"), "--no-progress")
    assert r.returncode == 0, r.stderr
    c = asapbench("compare", str(out), str(out), "--fail-on-regression", "0")
    assert c.returncode == 0, c.stderr
    assert "1.000" in c.stdout and "within noise" in c.stdout


def test_report_names_the_cells_a_later_file_replaced(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    render_all([row(ms=10.0), row(model="spade", ms=80.0)], a, [{"cpu_model": "CPU A"}])
    render_all([row(ms=11.0), row(h=1024, w=1024, ms=40.0)], b, [{"cpu_model": "CPU A"}])
    r = asapbench("report", str(a), str(b), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    replaced = [ln for ln in r.stderr.splitlines() if ln.startswith("replaced:")]
    assert replaced == [f"replaced: asapnet 256x512 torch fp32 cpu on CPU A: {b} replaces {a}"]
    assert "1 cell(s) taken from a later file" in r.stdout
    assert [x.ms_median for x in read_csv(tmp_path / "m" / "bench.csv")] == [10.0, 80.0, 11.0, 40.0]
