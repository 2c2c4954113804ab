"""Issue 12, at the console: exit codes and one line per reason, signals (SIGINT 130, SIGTERM 143) with
incomplete result sets, one consistent set per --out folder, a locked --out, stale temporary files, a full
disk (a tiny tmpfs), memory refused before allocating, and the small errors a new user hit. Subprocesses
of `python -m asapbench` with the tiny models at 32x64."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
FAST = ["--warmup", "1", "--iters", "3", "--min-seconds", "0", "--e2e-iters", "1", "--no-export-check"]


def asapbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "asapbench", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.1)


def wait_for_partial(out: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """The bench.partial.csv of the run now writing into ``out`` (in its own OUT/run-* folder)."""
    t0 = time.time()
    while True:
        found = sorted(out.glob("run-*/bench.partial.csv"))
        if found:
            return found[-1]
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"no bench.partial.csv appeared in {out}"
        time.sleep(0.1)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.strip().splitlines() if ln.startswith("asapbench: error:")]


# ---------------------------------------------------------------------------------------------
# exit codes and console reasons
# ---------------------------------------------------------------------------------------------
def test_tensorrt_on_the_cpu_exits_2_with_the_reasons(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "tensorrt", "--device", "cpu",
                  "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), *FAST)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    reasons = [ln for ln in r.stderr.splitlines() if ln.startswith("asapbench: no time:")]
    assert len(reasons) == 1 and "tensorrt" in reasons[0] and "--device cuda" in reasons[0]
    # and what is installed, as this machine has it: no GPU, so no flavour can run engines here
    import importlib.util

    assert "TensorRT is not usable" in reasons[0], reasons[0]
    if importlib.util.find_spec("tensorrt_rtx") is not None:
        assert "TensorRT-RTX" in reasons[0] and "cannot run engines here" in reasons[0], reasons[0]
    elif importlib.util.find_spec("tensorrt") is None:
        assert "pip install" in reasons[0], reasons[0]
    (last,) = error_lines(r.stderr)
    assert "no cell produced a time" in last and "1 unsupported" in last
    assert json.loads((tmp_path / "o" / "bench.json").read_text())["rows"][0]["status"] == "unsupported"


def test_fp16_on_the_cpu_exits_2(tmp_path):
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--precision", "fp16",
                  "--device", "cpu", "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 2, r.stderr
    assert any("fp16" in ln and "--precision fp32" in ln for ln in r.stderr.splitlines() if "no time:" in ln)
    assert "no cell produced a time" in error_lines(r.stderr)[0]


def test_every_failed_cell_gets_a_console_line_when_others_succeed(tmp_path):
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch,tensorrt",
                  "--precision", "fp32,fp16", "--device", "cpu", "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 0, r.stderr
    reasons = [ln for ln in r.stderr.splitlines() if ln.startswith("asapbench: no time:")]
    assert len(reasons) == 3  # torch fp16, tensorrt fp32, tensorrt fp16
    assert all("--" in ln for ln in reasons)  # each names the option to change
    assert "1 ok, 3 unsupported" in r.stdout


def test_budget_cell_line_names_the_option(tmp_path):
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--device", "cpu",
                  "--budget", "0.000001", "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 2, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "no time:" in ln]
    assert "budget" in line and "--budget" in line


# ---------------------------------------------------------------------------------------------
# interruptions, one consistent set, lock, stale temporary files
# ---------------------------------------------------------------------------------------------
SLOW = ["--models", "asapnet-tiny", "--res", "32x64,64x64,64x128,128x128", "--backends", "torch", "--device", "cpu",
        "--warmup", "1", "--iters", "3", "--min-seconds", "2.5", "--e2e-iters", "0"]


def _old_set(out: Path) -> None:
    from asapbench.record import BenchRow
    from asapbench.report import render_all

    render_all([BenchRow(model="old-model", height=8, width=8, ms_median=1.0, status="ok")], out)


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_keeps_rows_marks_the_set_incomplete_and_locks_the_folder(tmp_path, sig, code, name):
    out = tmp_path / "o"
    _old_set(out)
    stale = out / ".bench.csv.abc123.tmp"
    stale.write_text("half a file")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    proc = start("run", *SLOW, "--out", str(out))
    try:
        partial = wait_for_partial(out, proc)
        # during the run the folder still holds the earlier run's consistent set
        assert "old-model" in (out / "bench.csv").read_text() and "old-model" in (out / "bench.md").read_text()
        assert "asapnet-tiny" in partial.read_text()
        assert not stale.exists()  # a killed run's leftover is removed
        if sig == signal.SIGTERM:  # a second run into the same folder refuses in one line
            r2 = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--out", str(out), *FAST)
            assert r2.returncode == 2, r2.stderr
            (line,) = r2.stderr.strip().splitlines()
            assert "in use by another asapbench run" in line and f"pid {proc.pid}" in line
            assert proc.poll() is None
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"asapbench: interrupted ({name}) after ") and " of 4 cells; kept " in last, stderr
    assert str(out) in last
    obj = json.loads((out / "bench.json").read_text())
    assert obj["complete"] is False and obj["incomplete"]["cells_total"] == 4
    done = obj["incomplete"]["cells_done"]
    assert 1 <= done < 4 and len(obj["rows"]) == done
    assert "Incomplete run" in (out / "bench.md").read_text()
    assert "old-model" not in (out / "bench.csv").read_text()
    assert not partial.exists() and not (out / ".asapbench.lock").exists()
    assert (out / "latest").resolve() == partial.parent.resolve()
    (earlier,) = out.glob("earlier-*")  # the earlier set (written directly into OUT) is kept in a folder of its own
    assert "old-model" in (earlier / "bench.csv").read_text() and "old-model" in (earlier / "bench.md").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_live_lock_refuses_and_a_dead_one_is_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from asapbench.fsutil import FolderLock; "
                               "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(out)],
                              env=ENV, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--out", str(out), *FAST)
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr and "--out" in r.stderr
    finally:
        holder.kill()  # kill -9: the OS drops its lock, its file stays
        holder.wait()
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    assert "took over the lock" in r.stderr
    assert not (out / ".asapbench.lock").exists()
    assert json.loads((out / "bench.json").read_text())["complete"] is True


# ---------------------------------------------------------------------------------------------
# full disk (a 32 KiB tmpfs; root only) and memory
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/test_harness.py simulates ENOSPC")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_out_disk_is_one_line_naming_the_folder(tmp_path, tiny_disk):
    out = tiny_disk / "o"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--out", str(out),
                  "--cache-dir", str(tmp_path / "c"), *FAST)
    assert r.returncode == 2, r.stderr
    (line,) = error_lines(r.stderr)
    assert "no space left" in line and str(out) in line and "needed" in line and "--out" in line and "bench.partial.csv" in line


def test_full_cache_disk_is_one_line_naming_the_cache(tmp_path, tiny_disk):
    pytest.importorskip("onnxruntime")
    cache = tiny_disk / "c"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "onnxruntime",
                  "--out", str(tmp_path / "o"), "--cache-dir", str(cache), *FAST)
    assert r.returncode == 2, r.stderr
    (line,) = error_lines(r.stderr)
    assert "no space left" in line and str(cache) in line and "--cache-dir" in line and "needed" in line


def _max_child_rss_mb(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
            "sys.stderr.write(r.stderr); sys.stdout.write(r.stdout)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "asapbench", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout, env=ENV)
    lines = r.stdout.splitlines()
    r.returncode, rss = int(lines[0]), float(lines[1])
    r.stdout = "\n".join(lines[2:])
    r.wall = time.time() - t0
    return r, rss


def test_info_at_65536_allocates_nothing_proportional_to_the_image():
    r, rss = _max_child_rss_mb("info", "--model", "asapnet-tiny", "--res", "65536x65536", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["height"] == 65536 and info["macs"] > 0
    assert rss < 1500, rss  # the positional table alone would be 13 GiB


def test_run_at_65536_is_refused_before_allocating(tmp_path):
    r, rss = _max_child_rss_mb("run", "--models", "asapnet-tiny", "--res", "65536x65536", "--backends", "torch",
                               "--device", "cpu", "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 2, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "no time:" in ln]
    assert "oom" in line and "GiB" in line and "--res" in line
    assert rss < 1500, rss


# ---------------------------------------------------------------------------------------------
# small errors
# ---------------------------------------------------------------------------------------------
def test_out_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--out", str(f))
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "--out" in r.stderr


def test_failed_commands_leave_no_empty_out_folder(tmp_path):
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "100x7", "--out", str(tmp_path / "new" / "o"))
    assert r.returncode == 2
    r = asapbench("export", "--model", "asapnet-tiny", "--res", "100x7", "--out", str(tmp_path / "new2"))
    assert r.returncode == 2
    assert not (tmp_path / "new").exists() and not (tmp_path / "new2").exists()
    assert not r.stderr.startswith("\n") and len(r.stderr.strip().splitlines()) == 1  # no blank first line


def test_int8_is_worded_the_same_by_run_and_export(tmp_path):
    a = asapbench("run", "--models", "asapnet-tiny", "--precision", "int8", "--out", str(tmp_path / "o"))
    b = asapbench("export", "--model", "asapnet-tiny", "--res", "32x64", "--precision", "int8", "--out", str(tmp_path / "e"))
    assert a.returncode == b.returncode == 2
    want = "unknown --precision 'int8'; choose from: fp32, fp16"
    assert want in a.stderr and want in b.stderr


def test_report_dir_reads_its_bench_csv(tmp_path):
    _old_set(tmp_path / "run")
    r = asapbench("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert "old-model" in (tmp_path / "rep" / "bench.csv").read_text()


def test_cache_lists_and_clears(tmp_path):
    cache = tmp_path / "c"
    (cache / "onnx").mkdir(parents=True)
    (cache / "onnx" / "m-p-32x64-fp32.onnx").write_bytes(b"x" * 2**20)  # named as asapbench names exports
    r = asapbench("cache", "--cache-dir", str(cache))
    assert r.returncode == 0 and "onnx/m-p-32x64-fp32.onnx" in r.stdout and "1.0 MiB" in r.stdout and "total" in r.stdout
    r = asapbench("cache", "--cache-dir", str(cache), "--clear")  # stdin is not a terminal: asks for --yes
    assert r.returncode == 2 and "--yes" in r.stderr and (cache / "onnx" / "m-p-32x64-fp32.onnx").exists()
    r = asapbench("cache", "--cache-dir", str(cache), "--clear", "--yes")
    assert r.returncode == 0 and "deleted 1.0 MiB" in r.stdout and not (cache / "onnx").exists()
