"""Issue 19, what a newcomer meets: `--version`, every `--help` whole at 80 columns, `run`'s forecast on its
progress line, one line per finished cell when stderr is not a terminal, the displays at 80 columns (run's
live table, train's bar, export's stage line) dropping columns before cutting a number, and train's single
line after `--stop-after`. CLI cases are subprocesses of `python -m asapbench` with the tiny models."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
FAST = ["--warmup", "1", "--iters", "3", "--min-seconds", "0", "--e2e-iters", "1", "--no-export-check"]


def asapbench(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})})


def console(width: int = 80):
    from rich.console import Console

    return Console(width=width, file=io.StringIO(), record=True, color_system=None, force_terminal=True)


def rendered(renderable, width: int = 80) -> str:
    c = console(width)
    c.print(renderable)
    return c.export_text()


# ---------------------------------------------------------------------------------------------
# --version
# ---------------------------------------------------------------------------------------------
def test_version_prints_the_package_version():
    from asapbench.versions import asapbench_version

    r = asapbench("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"asapbench {asapbench_version()}"
    assert r.stderr == ""


# ---------------------------------------------------------------------------------------------
# run: the forecast on the progress line, and one line per cell off a terminal
# ---------------------------------------------------------------------------------------------
LONG_CELL = "pix2pixhd-local 1024x2048 onnxruntime-trt fp16"


def _display(monkeypatch, width: int = 80):
    from asapbench.commands.run import SweepDisplay

    monkeypatch.setenv("COLUMNS", str(width))  # the display's own stderr console takes this width
    return SweepDisplay(True)


def test_run_progress_line_shows_the_forecast_at_80_columns(monkeypatch):
    from asapbench.bench.sweep import SweepEvent

    d = _display(monkeypatch)
    d.start(12)
    d.cell(SweepEvent("cell", text=LONG_CELL, index=1))
    first = rendered(d._render())
    assert "0/12" in first and "ETA after the 1st cell" in first  # nothing to forecast from yet, and it says so
    d.cell(SweepEvent("cell", text=LONG_CELL, index=5, eta_s=1234.0, cell_eta_s=100.0))
    d.phase(f"{LONG_CELL}: end-to-end 12")
    text = rendered(d._render())
    assert "sweep ~21 min left" in text and "cell ~2 min" in text, text
    assert "…" not in text and all(w in text.split() for w in f"{LONG_CELL}: end-to-end 12".split()), text
    assert max(len(ln) for ln in text.splitlines()) <= 80
    d.progress.update(d.task, completed=12)
    assert "left" not in rendered(d._render())  # a finished sweep forecasts nothing


def test_forecast_counts_down_and_never_below_the_cells_after_this_one():
    from asapbench.commands.run import _eta_text

    eta = {"t0": 100.0, "cell_s": 100.0, "sweep_s": 1200.0, "after_s": 1100.0}
    assert _eta_text(eta, now=100.0) == "cell ~2 min, sweep ~20 min left"
    assert _eta_text(eta, now=160.0) == "cell ~40 s, sweep ~19 min left"
    assert _eta_text(eta, now=400.0) == "sweep ~18 min left"  # the cell overran its forecast: the rest still holds


def test_without_a_terminal_every_finished_cell_prints_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("tensorrt cells would run on this machine's GPU")
    r = asapbench("run", "--models", "asapnet-tiny", "--res", "32x64,64x64", "--backends", "torch,tensorrt",
                  "--device", "cpu", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), *FAST)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    done = [ln for ln in lines if ln.startswith("asapbench: cell ")]
    no_time = [ln for ln in lines if ln.startswith("asapbench: no time:")]
    assert len(done) + len(no_time) == 4 and len(no_time) == 2, r.stderr  # one line for each of the 4 cells
    assert done[0].startswith("asapbench: cell 1/4: asapnet-tiny 32x64 torch fp32 cpu: ") and "ms median" in done[0]
    assert re.search(r"\(took \d+ s; sweep ~\d+ s left\)$", done[0]), done[0]  # the engine's forecast after it
    assert done[1].startswith("asapbench: cell 3/4: asapnet-tiny 64x64 torch fp32 cpu: ")


# ---------------------------------------------------------------------------------------------
# displays at 80 columns: columns go before numbers are cut
# ---------------------------------------------------------------------------------------------
def test_run_live_table_at_80_columns_keeps_every_value_whole(monkeypatch):
    from asapbench.report import BenchRow

    ok = BenchRow(model="pix2pixhd-local", backend="onnxruntime-trt", precision="fp16", device="cuda", height=1024,
                  width=2048, ms_median=1234.56, e2e_ms_median=2345.67, cov=0.123, peak_mem_mib=12345.0, status="ok")
    failed = BenchRow(model="spade", backend="tensorrt", precision="fp16", device="cuda", height=2048, width=2048,
                      status="unsupported")
    d = _display(monkeypatch)
    d.start(2)
    d.finished(ok)
    d.finished(failed)
    text = rendered(d._table())
    assert "…" not in text and max(len(ln) for ln in text.splitlines()) <= 80, text
    words = text.split()
    for value in ("pix2pixhd-local", "1024x2048", "onnxruntime-trt", "1234.56", "spade", "2048x2048", "tensorrt"):
        assert value in words, (value, text)
    d = _display(monkeypatch, width=200)  # a wide terminal shows every column
    d.start(2)
    d.finished(ok)
    d.finished(failed)
    wide = rendered(d._table(), width=200)
    assert all(v in wide.split() for v in ("2345.67", "12.3%", "12345", "unsupported")), wide


def _train_bar(width: int):
    from asapbench import train as T

    c = console(width)
    run = types.SimpleNamespace(console=c, dist=types.SimpleNamespace(main=True),
                                cfg=types.SimpleNamespace(progress=True))
    bar = T._progress_bar(run)
    last = {"G_total": 12.345, "G_GAN": 1.234, "G_feat": 11.111, "G_VGG": 0.5, "D_real": 0.9, "D_fake": 1.1}
    bar.add_task("train", total=200, completed=18, **T._progress_info(3, last, 0.07, True))
    c.print(bar.make_tasks_table(bar.tasks))
    return c.export_text()


def test_train_bar_at_80_columns_drops_columns_not_numbers():
    text = _train_bar(80)
    assert "…" not in text and max(len(ln) for ln in text.splitlines()) <= 80, text
    for value in ("18/200", "12.345", "2.000", "0.07"):  # steps, G, D, speed: whole
        assert value in text.split(), (value, text)
    wide = _train_bar(200)
    assert "(G: gan 1.234 feat 11.111 vgg 0.500)" in wide and "ep 3" in wide  # the terms where there is room


def test_export_stage_line_at_80_columns_wraps_instead_of_cutting():
    from asapbench.commands.export import stage_bar

    c = console(80)
    bar = stage_bar(c)
    stage = "building the engine (TensorRT-RTX 1.7.1.116 (cu12), targets 8.6, 8.9, 12.0, workspace 12 GiB)"
    bar.add_task(stage, total=None)
    c.print(bar.make_tasks_table(bar.tasks))
    text = c.export_text()
    assert "…" not in text and " ".join(text.split()).endswith(stage), text


# ---------------------------------------------------------------------------------------------
# train: one line after --stop-after; a short run saves within itself
# ---------------------------------------------------------------------------------------------
def test_stop_after_prints_one_line_and_the_default_save_interval_fits_a_short_run(tmp_path):
    out = tmp_path / "r"
    r = asapbench("train", "--model", "asapnet-tiny", "--dataset", "synthetic", "--synthetic-size", "6", "--ndf", "8",
                  "--steps", "20", "--stop-after", "3", "--sample-every", "1000", "--no-progress", "--out", str(out),
                  timeout=180)
    assert r.returncode == 0, r.stderr
    said = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("train:")]
    assert "stopped after 3 steps as asked" in said[-1] and "at step 3/20" in said[-1], said
    assert not any(ln.startswith("train: done") for ln in said), said
    assert json.loads((out / "run.json").read_text())["args"]["save_every"] == 2  # a tenth of the 20 steps


# ---------------------------------------------------------------------------------------------
# --help at 80 columns: every option's text whole
# ---------------------------------------------------------------------------------------------
def _command_names() -> list[str]:
    """"" (the top-level help) and every registered command: a new command is checked without editing this list."""
    from asapbench.cli import app

    return ["", *(c.name for c in app.registered_commands)]


COMMANDS = _command_names()


def help_blocks(text: str) -> dict[str, Counter]:
    """The words of each row of the help's panels (an option with its names, type, help and default; a
    command with its description), keyed by the row's first word. A row starts at the panel's left edge
    (after the required column's "*" or its blank); its wrapped lines are indented further."""
    blocks: dict[str, Counter] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("│"):
            current = None
            continue
        body = line.strip().strip("│")[1:].rstrip()
        words = body.replace("*", " ", 1).split() if body.startswith("*") else body.split()
        if not words:
            continue
        if len(body) - len(body.lstrip()) <= 3 or body.startswith("*"):
            current = words[0]
            assert current not in blocks, (current, text)
            blocks[current] = Counter()
        blocks[current].update(words)
    return blocks


def _wide_help(command: str) -> str:
    from typer.testing import CliRunner

    from asapbench.cli import app

    r = CliRunner().invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": "1000"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_keeps_every_option_whole(command):
    r = asapbench(*([command] if command else []), "--help", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "…" not in text, text
    narrow, wide = help_blocks(text), help_blocks(_wide_help(command))
    assert set(narrow) == set(wide) and len(wide) >= 2, (sorted(narrow), sorted(wide))
    for key, words in wide.items():  # a wrapped row has the same words; a cut or broken one does not
        assert narrow[key] == words, (key, sorted((narrow[key] - words).elements()),
                                      sorted((words - narrow[key]).elements()), text)
    for opt, choices in _choices(command).items():  # a short metavar hides no choice: the help names each
        named = set(re.findall(r"[\w-]+", " ".join(narrow[opt].elements())))
        assert set(choices) <= named, (opt, choices, text)


def _choices(command: str) -> dict[str, list[str]]:
    """The options of ``command`` that take one of a fixed set of values: {long name: the values}."""
    import typer

    from asapbench.cli import app

    cmd = typer.main.get_command(app)
    if command:
        cmd = cmd.commands[command]
    out = {}
    for p in cmd.params:
        desc = getattr(p, "type_descriptor", None)  # typer >= 0.2x; click's own options have p.type
        choices = desc.choices if desc is not None and desc.is_choice else getattr(getattr(p, "type", None), "choices", None)
        if choices and p.opts[0].startswith("--"):
            out[p.opts[0]] = [getattr(c, "value", c) for c in choices]
    return out
