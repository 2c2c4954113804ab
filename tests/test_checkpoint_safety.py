"""Checkpoint and training safety (issue 12): non-finite weights, best-fit presets, hostile pickles,
run folders as --checkpoint, foreign files in a run folder on --resume, a full disk while checkpointing,
and `train --help`. Exit codes are checked in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from asapbench.checkpoint import HOSTILE, load_generator, save_generator
from asapbench.errors import UserError
from asapbench.registry import create_generator
from asapbench.train import CSV_FILE, GEN_FILE, RUN_FILE, STATE_FILE, TrainConfig, read_losses, train
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


def _train_args(out, model="asapnet-tiny", steps=4, save_every=2, *extra):
    return ["train", "--model", model, "--dataset", "synthetic", "--out", out, "--steps", steps, "--save-every",
            save_every, "--synthetic-size", 6, "--ndf", 8, "--sample-every", 1000, "--no-progress", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


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


def test_resume_refuses_a_state_with_non_finite_weights(tmp_path):
    out = tmp_path / "r"
    train(TrainConfig(model="asapnet-tiny", out=str(out), steps=2, **FAST))
    state = torch.load(out / STATE_FILE, weights_only=True)
    key = next(k for k, v in state["G"].items() if v.is_floating_point())
    state["G"][key] = torch.full_like(state["G"][key], float("nan"))
    torch.save(state, out / STATE_FILE)
    before = _snapshot(out)
    line = _error_line(_cli(*_train_args(out, steps=4), "--resume"))
    assert "non-finite weights" in line and key in line
    assert _snapshot(out) == before


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


# ---------------------------------------------------------------------------------------------
# foreign files in a run folder
# ---------------------------------------------------------------------------------------------
def test_foreign_train_state_is_refused_without_writing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(TrainConfig(model="asapnet-tiny", out=str(a), steps=20, save_every=20, **FAST))
    train(TrainConfig(model="pix2pixhd-tiny", out=str(b), steps=1, **FAST))
    shutil.copy(b / STATE_FILE, a / STATE_FILE)  # the other run's state lands in a
    before = _snapshot(a)
    for extra in (("--model", "asapnet-tiny"), ()):
        args = _train_args(a, steps=30, save_every=5)
        if not extra:
            args[1:3] = []  # no --model
        line = _error_line(_cli(*args, "--resume"))
        assert "belong to different runs" in line and RUN_FILE in line and CSV_FILE in line and GEN_FILE in line
        assert "leave them out" not in line and "delete" not in line and "another --out" in line
        assert _snapshot(a) == before  # losses.csv keeps its 20 rows, the generator is untouched
    assert len(read_losses(a)) == 20


def test_run_ids_agree_and_a_foreign_losses_csv_or_generator_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(TrainConfig(model="asapnet-tiny", out=str(a), steps=2, **FAST))
    train(TrainConfig(model="asapnet-tiny", out=str(b), steps=2, seed=1, **FAST))
    rid = json.loads((a / RUN_FILE).read_text())["run_id"]
    assert rid == torch.load(a / STATE_FILE, weights_only=True)["run_id"]
    assert (a / CSV_FILE).read_text().splitlines()[0].endswith(",run_id")
    assert all(line.endswith("," + rid) for line in (a / CSV_FILE).read_text().splitlines()[1:])
    for name in (CSV_FILE, GEN_FILE):
        c = tmp_path / f"c-{name}"
        shutil.copytree(a, c)
        shutil.copy(b / name, c / name)
        before = _snapshot(c)
        with pytest.raises(UserError, match=rf"belong to different runs.*{name}"):
            train(TrainConfig(model="asapnet-tiny", out=str(c), steps=4, resume=True, **FAST))
        assert _snapshot(c) == before
    with open(a / CSV_FILE, "a") as f:  # a row torn by kill -9 inside its run id
        f.write(f"3,0,0.0001,0.0004,1,1,1,0,3,1,1,2.5,{rid[:5]}")
    res = train(TrainConfig(out=str(a), steps=4, resume=True, dataset="synthetic", progress=False))
    assert res.step == 4 and res.resumed_from == 2
    assert json.loads((a / RUN_FILE).read_text())["run_id"] == rid


def test_a_generator_one_checkpoint_behind_the_state_resumes(tmp_path):
    """A kill (or a full disk) between writing the state and the generator leaves the older generator."""
    out = tmp_path / "r"
    train(TrainConfig(model="asapnet-tiny", out=str(out), steps=2, **FAST))
    old_gen, old_info = (out / GEN_FILE).read_bytes(), (out / RUN_FILE).read_text()
    train(TrainConfig(out=str(out), steps=4, resume=True, dataset="synthetic", progress=False))
    (out / GEN_FILE).write_bytes(old_gen)
    (out / RUN_FILE).write_text(old_info)
    res = train(TrainConfig(out=str(out), steps=5, resume=True, dataset="synthetic", progress=False))
    assert res.resumed_from == 4 and res.step == 5


def test_a_legacy_run_without_run_ids_still_resumes(tmp_path):
    """Runs written before run ids: no id in run.json, the state or losses.csv (nor its column)."""
    out = tmp_path / "r"
    train(TrainConfig(model="asapnet-tiny", out=str(out), steps=2, **FAST))
    state = torch.load(out / STATE_FILE, weights_only=True)
    del state["run_id"]
    torch.save(state, out / STATE_FILE)
    info = json.loads((out / RUN_FILE).read_text())
    del info["run_id"], info["generator_sha256"]
    (out / RUN_FILE).write_text(json.dumps(info))
    lines = (out / CSV_FILE).read_text().splitlines()
    (out / CSV_FILE).write_text("".join(ln.rsplit(",", 1)[0] + "\n" for ln in lines))
    res = train(TrainConfig(out=str(out), steps=4, resume=True, dataset="synthetic", progress=False))
    assert res.resumed_from == 2 and [r["step"] for r in read_losses(out)] == [1, 2, 3, 4]
    assert json.loads((out / RUN_FILE).read_text())["run_id"] == "legacy"
    # ... but a legacy state of another model is still refused
    other = tmp_path / "o"
    train(TrainConfig(model="pix2pixhd-tiny", out=str(other), steps=1, **FAST))
    st = torch.load(other / STATE_FILE, weights_only=True)
    del st["run_id"]
    torch.save(st, out / STATE_FILE)
    with pytest.raises(UserError, match="belong to different runs"):
        train(TrainConfig(out=str(out), steps=6, resume=True, dataset="synthetic", progress=False))


def test_a_fresh_run_does_not_overwrite_another_runs_files(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / CSV_FILE).write_text("step,epoch\n1,0\n")
    with pytest.raises(UserError, match=r"already holds losses.csv.*choose another --out"):
        train(TrainConfig(model="asapnet-tiny", out=str(out), steps=1, **FAST))
    assert (out / CSV_FILE).read_text() == "step,epoch\n1,0\n"


# ---------------------------------------------------------------------------------------------
# a full disk while checkpointing
# ---------------------------------------------------------------------------------------------
_ENOSPC_SCRIPT = """
import sys, torch
real = torch.save
calls = {"n": 0}
def save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] > %d:  # the first checkpoint (state + generator) fits, the next does not
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")
    return real(obj, f, *a, **k)
torch.save = save
from asapbench.cli import main
main(sys.argv[1:])
"""


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "r"
    p = subprocess.run([sys.executable, "-c", _ENOSPC_SCRIPT % 2, *map(str, _train_args(out, steps=6))], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=180)
    line = _error_line(p)
    assert f"no space left in {str(out)!r}" in line and "needs about" in line and "step 2 is intact" in line
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 2
    assert json.loads((out / RUN_FILE).read_text())["step"] == 2
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    res = train(TrainConfig(out=str(out), steps=6, resume=True, dataset="synthetic", progress=False))
    assert res.resumed_from == 2 and res.step == 6


def test_enospc_oserror_from_any_write_is_one_line(tmp_path, monkeypatch):
    import errno

    import asapbench.fsutil as fsutil

    real = fsutil.atomic_write_json
    state = {"n": 0}

    def failing(path, obj):
        state["n"] += 1
        if state["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(fsutil, "atomic_write_json", failing)
    out = tmp_path / "r"
    with pytest.raises(UserError, match=r"no space left in .* to save the checkpoint of step 4: it needs about"):
        train(TrainConfig(model="asapnet-tiny", out=str(out), steps=6, save_every=2, **FAST))
    assert json.loads((out / RUN_FILE).read_text())["step"] == 2


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}); the simulated "
                    "ENOSPC tests cover the same path")


def test_full_disk_on_a_real_small_tmpfs(tmp_path):
    # room for one checkpoint and its logs, not for the temporary copy of the next state beside it
    probe = tmp_path / "probe"
    train(TrainConfig(model="asapnet-tiny", out=str(probe), steps=2, save_every=2, **FAST))
    one = sum(f.stat().st_size for f in probe.iterdir() if f.is_file())
    state_size = (probe / STATE_FILE).stat().st_size
    size_kb = (one + state_size // 2) // 1024 + 8
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(mnt, f"{size_kb}k")
    try:
        out = mnt / "r"
        line = _error_line(_cli(*_train_args(out, steps=6, save_every=2)))
        assert f"no space left in {str(out)!r}" in line and "step 2 is intact" in line
        assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 2
        load_generator("asapnet-tiny", None, out / GEN_FILE)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------------------------
# train --help
# ---------------------------------------------------------------------------------------------
def test_train_help_shows_defaults_in_the_style_of_the_other_commands():
    p = subprocess.run([sys.executable, "-m", "asapbench", "train", "--help"], cwd=REPO,
                       env={**_env(), "COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text = p.stdout
    for needle in ("[default: 1]", "[default: a tenth of the steps, at most 1000]", "[default: 500]", "[default: 0]", "[default: 300]",
                   "[default: 0.0001]", "[default: 0.0004]", "[default: fixed]", "[default: train]",
                   "[default: 100]", "[default: 64]"):
        assert needle in text, needle
    rows = [ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("--") and "--help" not in ln]
    assert len(rows) >= 30
    helps = [re.split(r"\s{2,}", ln.strip(" │"))[-1] for ln in rows]  # after the names and the metavar
    assert all(h[:1].isupper() for h in helps), [h for h in helps if not h[:1].isupper()]
    assert all(h.split("[default")[0].rstrip().endswith((".", ")")) for h in helps), helps
