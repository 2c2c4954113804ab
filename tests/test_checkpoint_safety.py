"""Checkpoint safety (issue 12): non-finite weights, best-fit presets, hostile pickles, run folders as
--checkpoint. Exit codes are checked in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asapbench.checkpoint import HOSTILE, load_generator, save_generator
from asapbench.errors import UserError
from asapbench.registry import create_generator
from asapbench.train import GEN_FILE
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = dict(dataset="synthetic", synthetic_size=6, ndf=8, progress=False, sample_every=1000)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "asapbench", *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _error_line(p) -> str:
    """The one error line of a failed command (exit 2, no traceback, no other error or warning lines)."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "Warning" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("asapbench: error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------
# non-finite weights
# ---------------------------------------------------------------------------------------------
def _nan_checkpoint(path: Path) -> str:
    sd = create_generator("asapnet-tiny").state_dict()
    key = [k for k, v in sd.items() if v.is_floating_point()][2]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[:3] = float("nan")
    sd[key].view(-1)[3] = float("inf")
    torch.save(sd, path)
    return key


def test_non_finite_weights_are_refused_at_load(tmp_path):
    key = _nan_checkpoint(tmp_path / "nan.pth")
    with pytest.raises(UserError, match=rf"non-finite weights: {key} has 4 NaN/Inf values"):
        load_generator("asapnet-tiny", "tiny", tmp_path / "nan.pth")


def test_non_finite_weights_exit_2_from_export_and_run(tmp_path):
    key = _nan_checkpoint(tmp_path / "nan.pth")
    p = _cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--checkpoint", tmp_path / "nan.pth",
             "--no-check", "--out", tmp_path / "exp")
    line = _error_line(p)
    assert "non-finite weights" in line and key in line and "fp16" not in line and "precision" not in line
    p = _cli("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch", "--checkpoint",
             f"asapnet-tiny={tmp_path / 'nan.pth'}", "--out", tmp_path / "bench", "--no-progress")
    line = _error_line(p)
    assert "non-finite weights" in line and key in line
    assert not (tmp_path / "bench" / "bench.csv").exists()


# ---------------------------------------------------------------------------------------------
# best-fit preset, hostile pickles, folders
# ---------------------------------------------------------------------------------------------
def test_wrong_shape_without_preset_is_compared_with_the_best_fitting_preset(tmp_path):
    sd = create_generator("asapnet-tiny", "tiny-facades").state_dict()  # not the default preset ("tiny")
    key = [k for k, v in sd.items() if v.dim() == 4][1]
    expected = list(sd[key].shape)
    sd[key] = torch.zeros([d + 1 for d in expected])
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError) as e:
        load_generator("asapnet-tiny", None, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "asapnet-tiny:tiny-facades, the preset it fits best" in msg
    assert f"1 mis-shaped: {key} {[d + 1 for d in expected]} (model: {expected})" in msg
    assert "missing" not in msg and "unexpected" not in msg


def _hostile_files(tmp_path: Path) -> list[Path]:
    class Payload:
        def __reduce__(self):
            return (print, ("arbitrary code",))

    obj = {"w": torch.zeros(2), "x": Payload()}
    zip_file, legacy_file = tmp_path / "zip.pth", tmp_path / "legacy.pth"
    torch.save(obj, zip_file)
    torch.save(obj, legacy_file, _use_new_zipfile_serialization=False)
    return [zip_file, legacy_file]


def test_hostile_pickles_are_refused_in_full(tmp_path):
    for f in _hostile_files(tmp_path):
        with pytest.raises(UserError) as e:
            load_generator("asapnet-tiny", "tiny", f)
        assert HOSTILE in str(e.value) and "zip archive" not in str(e.value) and "corrupt" not in str(e.value)
        p = _cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--checkpoint", f, "--no-check",
                 "--out", tmp_path / "exp")
        line = _error_line(p)
        assert "refused: the file holds Python objects that safe loading rejects" in line
        assert "arbitrary code" not in p.stdout + p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # no torch warning lines


def test_damaged_files_name_the_format_without_cutting_words(tmp_path):
    good = tmp_path / "g.pth"
    save_generator(create_generator("asapnet-tiny"), good)
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(good, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert load_generator("asapnet-tiny", "tiny", legacy).preset == "tiny"  # a legacy file of tensors loads
    data = legacy.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt") as e:
        load_generator("asapnet-tiny", "tiny", tmp_path / "cut.pth")
    assert "not a PyTorch zip archive" not in str(e.value) and "legacy pickle" in str(e.value)
    reason = str(e.value).split("(", 1)[1].split(")")[0]
    assert reason.endswith((" ...", ".")) or len(reason) < 200


def test_a_folder_as_checkpoint(tmp_path):
    save_generator(create_generator("asapnet-tiny"), tmp_path / "run" / GEN_FILE)
    assert load_generator("asapnet-tiny", "tiny", tmp_path / "run").checkpoint_path.endswith(GEN_FILE)
    (tmp_path / "empty").mkdir()
    p = _cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--checkpoint", tmp_path / "empty",
             "--no-check", "--out", tmp_path / "exp")
    assert f"is a folder without a {GEN_FILE}" in _error_line(p)
