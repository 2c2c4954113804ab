"""`--lowres-conv` of run, export and profile (issue 17): ASAP-Net's low-res conv form chosen at the command
line, named in the rows (an override, so a part of the cell key) and in the export key; bad values and
models without the form are one-line errors (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO), "ASAPBENCH_PEAK_GEMM": "0"}
FAST = ["--warmup", "1", "--iters", "2", "--min-seconds", "0", "--e2e-iters", "0", "--threads", "1"]


def asapbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr
    text = " ".join(lines)
    assert "--lowres-conv" in text and all(w in text for w in words), r.stderr


@pytest.mark.parametrize("command", [["run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch"],
                                     ["export", "--model", "asapnet-tiny", "--res", "32x64"],
                                     ["profile", "--model", "asapnet-tiny", "--res", "32x64"]])
def test_an_unknown_form_is_one_line_naming_the_choices(tmp_path, command):
    r = asapbench(*command, "--lowres-conv", "fft", "--out" if command[0] != "profile" else "--json",
                  str(tmp_path / ("o" if command[0] != "profile" else "p.json")))
    _one_line_exit_2(r, "'fft'", "winograd4", "direct")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p.json").exists()


def test_a_form_for_models_without_it_is_one_line(tmp_path):
    r = asapbench("run", "--models", "pix2pix-tiny", "--res", "32x64", "--backends", "torch", "--lowres-conv",
                  "direct", "--out", str(tmp_path / "o"))
    _one_line_exit_2(r, "ASAP-Net", "pix2pix-tiny")


def test_run_times_the_form_asked_and_names_it_in_the_row(tmp_path):
    """Two runs, winograd4 and the default, merged by `report`: two cells (the form is part of the key), the
    winograd4 one on an export whose key names it."""
    cache = tmp_path / "cache"
    for form, out in (("winograd4", "a"), (None, "b")):
        extra = ["--lowres-conv", form] if form else []
        r = asapbench("run", "--models", "asapnet-tiny,pix2pix-tiny", "--res", "64x64", "--backends",
                      "torch,onnxruntime", *FAST, *extra, "--cache-dir", str(cache), "--out", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "a" / "bench.csv")))
    by = {(row["model"], row["backend"]): row for row in rows}
    assert all(row["status"] == "ok" for row in rows), [(r["model"], r["note"]) for r in rows]
    assert by[("asapnet-tiny", "torch")]["overrides"] == "lowres_conv=winograd4"
    assert by[("asapnet-tiny", "onnxruntime")]["overrides"] == "lowres_conv=winograd4"
    assert by[("pix2pix-tiny", "torch")]["overrides"] == ""  # other models ignore it
    keys = [json.load(open(p))["key"]["graph_variant"] for p in cache.rglob("asapnet-tiny*.json") if "key" in json.load(open(p))]
    assert any("lowres=winograd4" in k for k in keys), keys
    assert any(k.endswith("lowres=winograd") for k in keys), keys
    b = list(csv.DictReader(open(tmp_path / "b" / "bench.csv")))
    assert {row["overrides"] for row in b if row["model"] == "asapnet-tiny"} == {""}
    r = asapbench("report", str(tmp_path / "a" / "bench.csv"), str(tmp_path / "b" / "bench.csv"), "--out",
                  str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr
    merged = list(csv.DictReader(open(tmp_path / "merged" / "bench.csv")))
    assert len([row for row in merged if row["model"] == "asapnet-tiny"]) == 4  # 2 forms x 2 backends


def test_export_and_profile_take_the_form(tmp_path):
    r = asapbench("export", "--model", "asapnet-tiny", "--res", "32x64", "--lowres-conv", "direct", "--out",
                  str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    (side,) = [json.load(open(p)) for p in (tmp_path / "e").glob("*.json")]
    assert side["key"]["graph_variant"] == "pixelwise=fast,groups=65536"  # the direct convs: no lowres= part
    r = asapbench("profile", "--model", "asapnet-tiny", "--res", "32x64", "--lowres-conv", "winograd4", "--iters",
                  "1", "--gemm-size", "64", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "p.json"))["lowres_conv"] == "winograd4"


def test_two_forms_of_one_checkpoint_keep_their_own_export_files(tmp_path):
    """A checkpoint's model gets the form set on it (its weights stay); the export's file name and key still name the
    form, so a winograd4 run and a default run sharing a cache do not overwrite each other's file."""
    from asapbench import create_generator
    from asapbench.checkpoint import save_generator

    ckpt = save_generator(create_generator("asapnet-tiny"), tmp_path / "g.pth")
    cache = tmp_path / "cache"
    for form, out in (("winograd4", "a"), (None, "b")):
        extra = ["--lowres-conv", form] if form else []
        r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "onnxruntime", *FAST, *extra,
                      "--checkpoint", f"asapnet-tiny={ckpt}", "--cache-dir", str(cache), "--out", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
    sides = {p.name: json.load(open(p)) for p in (cache / "onnx").glob("*.json")}
    variants = sorted(side["key"]["graph_variant"] for side in sides.values())
    assert variants == ["pixelwise=fast,groups=65536,lowres=winograd", "pixelwise=fast,groups=65536,lowres=winograd4"], sides
    assert any("lowresconvwinograd4" in name for name in sides)
