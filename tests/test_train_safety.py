"""Training and input-file faults (issue 18): a locked training folder, a generator that matches the state
after a kill between the two writes, a failed start that leaves nothing, a stop at the first non-finite
loss, one short line for another model's checkpoint, and one line (never a hang) for decompression bombs
and FIFOs among a user's images. Exit codes and kills are checked in subprocesses."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asapbench.checkpoint import load_generator
from asapbench.data import build_dataset
from asapbench.errors import UserError
from asapbench.fsutil import sha256_file
from asapbench.train import CSV_FILE, GEN_FILE, RUN_FILE, STATE_FILE, TrainConfig, read_losses, train
from tests.conftest import REPO, assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = dict(dataset="synthetic", synthetic_size=6, ndf=8, progress=False, sample_every=1000)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    env.pop("WORLD_SIZE", None)
    return env


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "asapbench", *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _train_args(out, steps=4, save_every=2, *extra):
    return ["train", "--model", "asapnet-tiny", "--dataset", "synthetic", "--out", out, "--steps", steps,
            "--save-every", save_every, "--synthetic-size", 6, "--ndf", 8, "--sample-every", 1000, "--no-progress",
            *extra]


def _error_line(p, *needles: str) -> str:
    """The one error line of a failed `train` (exit 2, no traceback; its progress lines may come before it)."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("asapbench:")]
    assert len(errors) == 1 and errors[0].startswith("asapbench: error:"), p.stderr
    assert p.stderr.rstrip().endswith(errors[0]), p.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def _popen(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=_env(), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# 1. the training folder is locked
# ---------------------------------------------------------------------------------------------
def test_train_refuses_an_out_folder_another_run_holds(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    holder = _popen("import sys\nfrom asapbench.fsutil import FolderLock\nFolderLock(sys.argv[1], '--out').acquire()\n"
                    "print('locked', flush=True)\nsys.stdin.read()\n", out)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        p = _cli(*_train_args(out, 2, 2))
        _error_line(p, str(out), "--out")  # the folder is in use (FolderLock words the rest)
        assert not any((out / n).exists() for n in (CSV_FILE, STATE_FILE, GEN_FILE, RUN_FILE))
    finally:
        holder.communicate(input="", timeout=30)


def test_two_trains_started_together_into_one_empty_out(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "asapbench", *map(str, _train_args(out, 4, 2))], cwd=REPO,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2)  # refused: in use (they overlapped) or already trained (they did not)
    errors = [ln for ln in err.splitlines() if ln.startswith("asapbench: error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "Traceback" not in err, err
    # whatever the timing, the folder holds one run's files
    state = torch.load(out / STATE_FILE, weights_only=True)
    info = json.loads((out / RUN_FILE).read_text())
    ids = {line.rsplit(",", 1)[1] for line in (out / CSV_FILE).read_text().splitlines()[1:]}
    assert info["run_id"] == state["run_id"] and ids == {state["run_id"]}
    assert info["generator_sha256"] == sha256_file(out / GEN_FILE)
    assert [r["step"] for r in read_losses(out)] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# 2. kill -9 between train_state.pt and latest_net_G.pth
# ---------------------------------------------------------------------------------------------
#: train with a kill -9 of this process right after train_state.pt of the second checkpoint was written,
#: before latest_net_G.pth: the second save_generator call kills
_KILL_AT_SECOND_GENERATOR = """
import os, signal, sys
import asapbench.checkpoint as ck
calls = []
real = ck.save_generator
def save_generator(model, path):
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(model, path)
ck.save_generator = save_generator
from asapbench.cli import main
main(sys.argv[1:])
"""


def test_kill9_between_state_and_generator_then_resume_rewrites_the_generator(tmp_path):
    out = tmp_path / "r"
    p = _popen(_KILL_AT_SECOND_GENERATOR, *_train_args(out, 4, 2))
    _, err = p.communicate(timeout=300)
    assert p.returncode == -9, err
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 4
    gen = torch.load(out / GEN_FILE, weights_only=True)
    assert not all(torch.equal(gen[k], state["G"][k]) for k in gen)  # the kill point: the generator of step 2
    p = _cli(*_train_args(out, 4, 2, "--resume"))
    assert p.returncode == 0, p.stderr
    assert "rewrote" in p.stderr
    gen = torch.load(out / GEN_FILE, weights_only=True)
    assert set(gen) == set(state["G"]) and all(torch.equal(gen[k], state["G"][k]) for k in gen)
    info = json.loads((out / RUN_FILE).read_text())
    assert info["step"] == 4 and info["generator_sha256"] == sha256_file(out / GEN_FILE)


# ---------------------------------------------------------------------------------------------
# 3. a failed start leaves nothing
# ---------------------------------------------------------------------------------------------
def test_a_start_that_fails_validation_leaves_nothing_and_the_suggested_retry_runs(tmp_path):
    data = tmp_path / "data"
    for sub in ("label", "image"):
        (data / sub).mkdir(parents=True)
    for k in "ab":
        Image.fromarray(np.full((32, 64), 7, np.uint8)).save(data / "label" / f"{k}.png")
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(data / "image" / f"{k}.png")
    out = tmp_path / "runs" / "r"
    args = ["train", "--model", "asapnet-tiny", "--dataset", "folder", "--data", data, "--res", "32x64", "--out", out,
            "--steps", 2, "--ndf", 8, "--sample-every", 1, "--no-progress"]
    _error_line(_cli(*args, "--label-nc", 5), "label id 7", "--label-nc 8")
    assert not (tmp_path / "runs").exists()  # not even the folders it created
    out.mkdir(parents=True)  # a folder of the user's own: kept, and left empty
    _error_line(_cli(*args, "--label-nc", 5), "label id 7")
    assert _files(out) == []
    p = _cli(*args, "--label-nc", 8)
    assert p.returncode == 0, p.stderr
    assert [r["step"] for r in read_losses(out)] == [1, 2]


# ---------------------------------------------------------------------------------------------
# 4. non-finite losses
# ---------------------------------------------------------------------------------------------
def test_a_non_finite_loss_stops_with_exit_1_and_keeps_the_last_finite_checkpoint(tmp_path):
    out = tmp_path / "r"
    p = _cli(*_train_args(out, 8, 1, "--lr-g", "1e12"))
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("asapbench:")]
    assert len(lines) == 1 and "training diverged at step" in lines[0] and "non-finite" in lines[0], p.stderr
    bad_step = int(lines[0].split("training diverged at step ")[1].split(":")[0])
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert 1 <= state["step"] == bad_step - 1  # checkpoints every step: the one before the bad step is kept
    assert f"checkpoint of step {state['step']}" in lines[0]
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())
    gen = torch.load(out / GEN_FILE, weights_only=True)
    assert all(torch.equal(gen[k], state["G"][k]) for k in gen)
    assert json.loads((out / RUN_FILE).read_text())["step"] == state["step"]
    assert "done" not in p.stderr


def test_a_non_finite_loss_before_the_first_checkpoint_leaves_nothing(tmp_path):
    from asapbench.train import TrainingDiverged

    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged) as e:
        train(TrainConfig(model="asapnet-tiny", out=str(out), steps=8, save_every=100, lr_g=1e12, **FAST))
    assert e.value.kept is None and "nothing is kept" in str(e.value)
    assert _files(out) == []


# ---------------------------------------------------------------------------------------------
# 5. another model's checkpoint
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-run") / "r"
    train(TrainConfig(model="asapnet-tiny", out=str(out), steps=2, save_every=2, **FAST))
    return out


def test_another_models_checkpoint_is_named_in_one_short_line(tiny_run, tmp_path):
    gen = tiny_run / GEN_FILE
    with pytest.raises(UserError) as e:  # beside its run.json
        load_generator("asapnet", None, gen)
    msg = str(e.value)
    assert "asapnet-tiny:tiny" in msg and "run.json" in msg and len(msg) < 400, msg
    assert "lowres_stream" not in msg  # no tensor names
    alone = tmp_path / "alone.pth"  # without its run.json: found by its shapes
    alone.write_bytes(gen.read_bytes())
    with pytest.raises(UserError) as e:
        load_generator("pix2pixhd", None, alone)
    assert "asapnet-tiny:tiny" in str(e.value) and len(str(e.value)) < 400, str(e.value)
    p = _cli("export", "--model", "asapnet", "--res", "256x512", "--checkpoint", gen, "--out", tmp_path / "e")
    assert_one_line_error(p, "asapnet-tiny:tiny", "not of asapnet:cityscapes")  # `run` loads through load_generator too
    assert len(p.stderr) < 400, p.stderr


def test_a_resume_whose_state_does_not_fit_its_model_is_one_line(tiny_run, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    state = torch.load(tiny_run / STATE_FILE, weights_only=True)
    state["G"] = {f"extra.{k}" if i % 2 else k: v for i, (k, v) in enumerate(state["G"].items())}
    torch.save(state, out / STATE_FILE)
    before = (out / STATE_FILE).read_bytes()
    p = _cli(*_train_args(out, 4, 2, "--resume"))
    _error_line(p, "does not fit asapnet-tiny:tiny", "missing", STATE_FILE)
    assert _files(out) == [STATE_FILE] and (out / STATE_FILE).read_bytes() == before


# ---------------------------------------------------------------------------------------------
# 6. a user's images: decompression bombs and FIFOs
# ---------------------------------------------------------------------------------------------
def _bomb_png(path: Path, width: int = 14000, height: int = 14000) -> Path:
    """A valid 1-bit PNG of width x height pixels (196 megapixels by default) in a few kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_among_parity_labels_or_training_data_is_one_line(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    _bomb_png(maps / "big.png")
    p = _cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--parity-labels", maps, "--out", tmp_path / "e")
    assert_one_line_error(p, "big.png", "196 megapixels", "decompression-bomb")
    assert not list((tmp_path / "e").glob("*.onnx")) if (tmp_path / "e").exists() else True
    data = tmp_path / "data"
    (data / "label").mkdir(parents=True)
    (data / "image").mkdir()
    _bomb_png(data / "label" / "a.png")
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(data / "image" / "a.png")
    out = tmp_path / "r"
    with pytest.raises(UserError, match="a.png' has 196 megapixels"):  # in this process
        build_dataset("folder", data, (32, 64), 6, preprocess="none")[0]
    p = _cli("train", "--model", "asapnet-tiny", "--dataset", "folder", "--data", data, "--label-nc", 6, "--res",
             "32x64", "--out", out, "--steps", 1, "--ndf", 8, "--no-progress", "--workers", 1)  # in a loader worker
    _error_line(p, "label map", "a.png", "196 megapixels")
    assert "DataLoader" not in p.stderr
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_named_like_an_image_is_skipped_or_refused_never_waited_on(tmp_path):
    from asapbench.images import open_user_image

    maps = tmp_path / "maps"
    maps.mkdir()
    os.mkfifo(maps / "a.png")
    arr = np.zeros((32, 64), np.uint8)
    arr[:, 32:] = 3
    Image.fromarray(arr).save(maps / "b.png")
    p = _cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--parity-labels", maps, "--out", tmp_path / "e",
             timeout=180)
    assert p.returncode == 0, p.stderr  # the FIFO was skipped; b.png gated the parity
    assert "parity passed" in p.stdout, p.stdout
    with pytest.raises(UserError, match="a.png' is a FIFO"):
        open_user_image(maps / "a.png", "label map")  # does not block: no writer ever opens the FIFO
