"""`python -m asapbench run`: bad input is one line on stderr and exit code 2; a tiny run writes all four outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]


def asapbench(*args: str, timeout: float = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)




@pytest.mark.parametrize(
    "args, words",
    [
        (["--res", "100x7"], ["100x7"]),
        (["--res", "abc"], ["abc"]),
        (["--res", "0x512"], ["positive"]),
        (["--backends", "tensorflow"], ["tensorflow", "onnxruntime"]),
        (["--models", "nosuchnet"], ["nosuchnet", "asapnet"]),
        (["--precision", "int3"], ["int3"]),
        (["--checkpoint", "asapnet-tiny"], ["MODEL=PATH"]),
        (["--checkpoint", "asapnet-tiny=/no/such/file.pth"], ["no such file"]),
        (["--batch", "0"], ["--batch"]),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    base = ["run", "--models", "asapnet-tiny", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    r = asapbench(*base, *args)
    assert_one_line_error(r, *words)
    assert not (tmp_path / "o" / "bench.csv").exists()


def test_unwritable_out_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--out", str(blocker / "sub"))
    assert_one_line_error(r, "--out")


def test_device_cuda_without_gpu_is_one_line_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = asapbench("run", "--models", "asapnet-tiny", "--device", "cuda", "--out", str(tmp_path))
    assert_one_line_error(r, "--device cuda")


def test_cuda_graph_on_cpu_is_one_line_exit_2(tmp_path):
    r = asapbench("run", "--models", "asapnet-tiny", "--device", "cpu", "--cuda-graph", "--out", str(tmp_path))
    assert_one_line_error(r, "--cuda-graph")


def test_help_lists_the_options():
    r = asapbench("run", "--help")
    assert r.returncode == 0
    for opt in ("--models", "--res", "--backends", "--precision", "--device", "--batch", "--warmup", "--iters",
                "--min-seconds", "--checkpoint", "--out", "--budget", "--cuda-graph"):
        assert opt in r.stdout


def test_tiny_run_from_the_command_line(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch,onnxruntime",
                  "--iters", "3", "--min-seconds", "0", "--warmup", "1", "--e2e-iters", "1",
                  "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert "2 ok" in r.stdout
    for f in ("bench.csv", "bench.md", "bench.json", "latency_vs_megapixels.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    md = (out / "bench.md").read_text()
    assert "--res 32x64" in md  # the command line is recorded
