"""Input bounds and degenerate outputs (issue 18): out-of-range sizes and numbers are one line and exit 2 before
any work; `export` is refused by the memory estimate `run` uses; a cell whose output is NaN/Inf or constant is an
`error` row, not a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch"]
QUICK = ["--warmup", "0", "--iters", "1", "--min-seconds", "0", "--e2e-iters", "0"]


def asapbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


# ------------------------------------------------------------------------------------------------
# resolutions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "run"])
@pytest.mark.parametrize("res", ["2147483648x64", "4294967296x4294967296"])
def test_resolution_beyond_the_range_is_one_line(tmp_path, command, res):
    args = ["--model", "asapnet-tiny", "--res", res] if command == "info" else [
        *TINY[:2], "--res", res, "--backends", "torch", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    r = asapbench(command, *args)
    assert_one_line_error(r, res, "[1, 65536]")
    assert not (tmp_path / "o").exists()


def test_empty_res_is_an_error_not_the_default(tmp_path):
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "", "--backends", "torch", "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "--res", "empty")
    assert not (tmp_path / "o").exists()  # nothing ran (the default 256x512 did before)


def test_info_still_counts_the_largest_size_without_allocating():
    """65536x65536 is inside the range: counted on the meta device. pix2pixhd-tiny is fully convolutional, so its
    MACs grow with the pixels: 65536^2 has (65536/256)^2 times the MACs of 256x256 (counted separately)."""
    big = asapbench("info", "--model", "pix2pixhd-tiny", "--res", "65536x65536", "--json")
    small = asapbench("info", "--model", "pix2pixhd-tiny", "--res", "256x256", "--json")
    assert big.returncode == 0 and small.returncode == 0, big.stderr + small.stderr
    b, s = json.loads(big.stdout), json.loads(small.stdout)
    assert (b["height"], b["width"]) == (65536, 65536)
    assert b["macs"] == s["macs"] * (65536 // 256) ** 2


# ------------------------------------------------------------------------------------------------
# export guarded by the memory estimate
# ------------------------------------------------------------------------------------------------
def test_export_refuses_a_size_whose_forward_does_not_fit(tmp_path):
    """pix2pixhd-tiny at 65536x65536 needs hundreds of GiB (its input alone is 65536^2 x 37 floats = 592 GiB):
    refused by the estimate before anything is allocated, and what was in --out stays."""
    out = tmp_path / "exports"
    out.mkdir()
    (out / "earlier.onnx").write_bytes(b"kept")
    r = asapbench("export", "--model", "pix2pixhd-tiny", "--res", "65536", "--out", str(out))
    assert_one_line_error(r, "--res 65536x65536", "GiB", "available memory", "smaller --res")
    assert sorted(p.name for p in out.iterdir()) == ["earlier.onnx"]
    assert (out / "earlier.onnx").read_bytes() == b"kept"


def test_export_memory_check_uses_the_run_estimate(monkeypatch, tmp_path):
    """The same estimate as `run`: with memory reported as 1 KiB even a tiny export is refused; nothing written."""
    from asapbench.bench import memory
    from asapbench.commands.export import export_models
    from asapbench.errors import UserError

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1024)
    with pytest.raises(UserError, match=r"--res 32x64: not exported: .*more than the 0 MiB available"):
        export_models("asapnet-tiny", ["32x64"], out=tmp_path / "o", log=lambda s: None)
    assert not any((tmp_path / "o").iterdir())


# ------------------------------------------------------------------------------------------------
# numeric options
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--threads", "100000"], ["--threads 100000", "[1, 1024]"]),
    (["--min-seconds", "nan"], ["--min-seconds nan", "[0, 86400]"]),
    (["--budget", "-1"], ["--budget -1", "[0, 604800]"]),
    (["--budget", "nan"], ["--budget nan", "[0, 604800]"]),
    (["--seed", str(2**64)], [f"--seed {2**64}", "[0, 4294967295]"]),
])
def test_issue_numbers_are_one_line_errors(tmp_path, args, words):
    r = asapbench("run", *TINY, *QUICK, *args, "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    assert_one_line_error(r, *words)
    assert not (tmp_path / "o").exists()


#: what each command needs besides the option under test (quick settings, so a missed check fails fast)
BASE = {
    "run": [*TINY, *QUICK, "--out", "{tmp}/o", "--cache-dir", "{tmp}/c", "--no-progress"],
    "export": ["--model", "asapnet-tiny", "--res", "32x64", "--out", "{tmp}/o", "--no-check"],
    "profile": ["--model", "asapnet-tiny", "--res", "32x64", "--iters", "1", "--warmup", "0", "--gemm-size", "16"],
    "train": ["--model", "asapnet-tiny", "--dataset", "synthetic", "--res", "32x64", "--out", "{tmp}/o", "--steps", "1",
              "--synthetic-size", "2", "--no-progress"],
    "info": ["--model", "asapnet-tiny", "--res", "32x64"],
    "engines": ["{tmp}/none.onnx", "--out", "{tmp}/o"],
    "compare": ["{tmp}/a", "{tmp}/b", "--out", "{tmp}/o"],
}


def _numeric_options():
    """(command, --option, click type name) for every int/float option of every command."""
    from typer.main import get_command

    from asapbench.cli import app

    group = get_command(app)
    out = []
    for name, cmd in sorted(group.commands.items()):
        for p in cmd.params:
            if not p.opts or not p.opts[0].startswith("-"):
                continue
            ann = p.type_descriptor.annotation  # int, float, Optional[int], list[str], ...
            kind = ann if ann in (int, float) else next((a for a in typing.get_args(ann) if a in (int, float)), None)
            if kind is not None:
                out.append((name, max(p.opts, key=len), kind.__name__))
    return out


def test_every_numeric_option_has_a_range():
    from asapbench.bounds import RANGES

    opts = _numeric_options()
    assert {c for c, _, _ in opts} >= {"run", "export", "profile", "train", "info", "engines"}
    missing = [f"{c} {o}" for c, o, _ in opts if o not in RANGES]
    assert not missing, missing


def _outside(option: str) -> list[str]:
    from asapbench.bounds import RANGES

    r = RANGES[option]
    below = r.lo if r.lo_open else r.lo - 1
    vals = [f"{below:g}" if not r.integer else str(int(below)), str(int(r.hi) + 1) if r.integer else f"{r.hi * 2:g}"]
    return vals + ([] if r.integer else ["nan", "inf"])


@pytest.mark.parametrize("command, option, kind", _numeric_options())
def test_every_numeric_option_refuses_values_outside_its_range(tmp_path, capsys, command, option, kind):
    """In-process through `asapbench.cli.main` (the issue's cases run as subprocesses above): below, above, NaN and
    Inf are each one line naming the option and its range, exit 2."""
    from asapbench.bounds import RANGES
    from asapbench.cli import main

    base = [a.replace("{tmp}", str(tmp_path)) for a in BASE[command]]
    for value in _outside(option):
        with pytest.raises(SystemExit) as e:
            main([command, *base, option, value])
        err = capsys.readouterr().err
        assert e.value.code == 2, (option, value, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"asapbench: error: {option} "), (value, err)
        assert RANGES[option].text() in lines[0], lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ------------------------------------------------------------------------------------------------
# degenerate outputs
# ------------------------------------------------------------------------------------------------
def _saved_tiny(path: Path, scale: float) -> Path:
    from asapbench.checkpoint import save_generator
    from asapbench.registry import build_for_resolution

    g = build_for_resolution("asapnet-tiny", 32, 64, seed=0)
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(scale)
    return save_generator(g, path)


def test_nonfinite_output_is_an_error_row_for_every_backend(tmp_path):
    """Finite weights x1e30: every output value overflows. Before, the torch row was `ok` with a time."""
    pytest.importorskip("onnxruntime")
    ckpt = _saved_tiny(tmp_path / "big.pth", 1e30)
    out = tmp_path / "o"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch,onnxruntime",
                  "--no-export-check", "--checkpoint", f"asapnet-tiny={ckpt}", *QUICK, "--out", str(out),
                  "--cache-dir", str(tmp_path / "c"), "--no-progress")
    assert r.returncode == 2, r.stderr
    import pandas as pd

    df = pd.read_csv(out / "bench.csv")
    assert list(df.backend) == ["torch", "onnxruntime"]
    assert list(df.status) == ["error", "error"], df.note.tolist()
    assert df.ms_median.isna().all()
    assert all("6144 of 6144 output values are NaN/Inf" in n for n in df.note), df.note.tolist()
    for b in ("torch", "onnxruntime"):
        assert any(ln.startswith(f"asapbench: no time: asapnet-tiny 32x64 {b} fp32 cpu: error: not timed")
                   for ln in r.stderr.splitlines()), r.stderr


def test_constant_output_is_an_error_row(tmp_path, one_thread):
    """All-zero weights: the output is 0 everywhere (tanh(0)); an `error` row naming it, no time."""
    from asapbench.bench.sweep import SweepConfig, iter_sweep
    from asapbench.checkpoint import load_generator

    ckpt = _saved_tiny(tmp_path / "zero.pth", 0.0)
    model = load_generator("asapnet-tiny", None, str(ckpt)).prepare_for_inference()
    cfg = SweepConfig(models=["asapnet-tiny"], resolutions=[(32, 64)], backends=["torch"], warmup=0, iters=1,
                      e2e_iters=0, cache_dir=tmp_path / "c")
    rows = [ev.row for ev in iter_sweep(cfg, env={}, checkpoint_models={"asapnet-tiny": model}) if ev.kind == "row"]
    assert [r.status for r in rows] == ["error"]
    assert "output is constant (0 everywhere)" in rows[0].note and rows[0].ms_median is None
