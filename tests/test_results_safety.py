"""Issue 18, "Nothing lost, nothing forged, nothing run": result folders keep every set (one folder per run,
``OUT/latest`` switched with one rename), a killed run's rows are kept, `report` keeps the incomplete marker,
hand-edited or hostile files give one-line errors (CSV numbers, CSV/markdown escaping, deeply nested JSON),
the --out lock is an OS lock, and the git probe runs no git hook or config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asapbench.errors import UserError
from asapbench.report import BenchRow, markdown, merge_report, read_csv, render_all, write_csv
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TINY = ["--models", "asapnet-tiny", "--backends", "torch", "--device", "cpu", "--warmup", "0", "--iters", "1",
        "--min-seconds", "0", "--e2e-iters", "0", "--no-progress"]
FAST = dict(models=["asapnet-tiny"], backends=["torch"], device="cpu", warmup=0, iters=1, min_seconds=0.0,
            e2e_iters=0, progress=False)


def asapbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _row(model: str = "asapnet-tiny", ms: float = 2.0, **kw) -> BenchRow:
    base = dict(model=model, preset="p", backend="torch", precision="fp32", device="cpu", height=32, width=64,
                ms_median=ms, cov=0.01, status="ok", cpu_model="Test CPU")
    return BenchRow(**{**base, **kw})


def _set_of(folder: Path) -> dict[str, str]:
    """What each of the four files of a set says about its rows (the models, in order)."""
    rows = read_csv(folder / "bench.csv")
    obj = json.loads((folder / "bench.json").read_text())
    return {"csv": ",".join(r.model + r.res for r in rows),
            "json": ",".join(r["model"] + f"{r['height']}x{r['width']}" for r in obj["rows"]),
            "md": ",".join(m for m in ("asapnet-tiny", "old-model") if m in (folder / "bench.md").read_text())}


# ---------------------------------------------------------------------------------------------
# items 1-3: a fresh folder per run, OUT/latest switched with one rename; a killed run's rows kept
# ---------------------------------------------------------------------------------------------
def test_a_second_run_keeps_the_first_set(tmp_path):
    """README's sequence `run` then `run --res ...` into one folder: both sets are kept, OUT/bench.csv and
    OUT/latest name the second, `report OUT` reads it."""
    from asapbench.commands.run import run_benchmark

    out = tmp_path / "bench-out"
    run_benchmark(out=out, res=["32x64"], cache_dir=tmp_path / "c", **FAST)
    first = (out / "latest").resolve()
    run_benchmark(out=out, res=["64x64"], cache_dir=tmp_path / "c", **FAST)
    second = (out / "latest").resolve()
    assert first != second and first.parent == second.parent == out.resolve()
    assert [r.res for r in read_csv(first / "bench.csv")] == ["32x64"]
    assert [r.res for r in read_csv(second / "bench.csv")] == ["64x64"]
    assert [r.res for r in read_csv(out / "bench.csv")] == ["64x64"]
    assert sorted(p.name for p in out.glob("run-*")) == sorted([first.name, second.name])
    merge_report([out], tmp_path / "rep")
    assert [r.res for r in read_csv(tmp_path / "rep" / "bench.csv")] == ["64x64"]


def test_a_run_into_a_folder_of_the_older_layout_moves_those_files_aside(tmp_path):
    from asapbench.commands.run import run_benchmark

    out = tmp_path / "o"
    render_all([_row("old-model", height=8, width=8)], out)  # four plain files, as earlier versions wrote them
    run_benchmark(out=out, res=["32x64"], cache_dir=tmp_path / "c", **FAST)
    (earlier,) = out.glob("earlier-*")
    assert _set_of(earlier) == {"csv": "old-model8x8", "json": "old-model8x8", "md": "old-model"}
    assert _set_of(out) == {"csv": "asapnet-tiny32x64", "json": "asapnet-tiny32x64", "md": "asapnet-tiny"}


def test_a_kill_between_the_result_renames_leaves_no_mixed_set(tmp_path, monkeypatch):
    """A run killed after bench.csv of its set was renamed into place and before bench.md was: the files
    OUT/bench.* still all show the earlier set."""
    import asapbench.fsutil as F
    from asapbench.commands.run import run_benchmark

    out = tmp_path / "o"
    render_all([_row("old-model", height=8, width=8)], out)
    real = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst).endswith("bench.md"):
            raise SystemExit("killed")  # what the process sees of kill -9: nothing after this point runs
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(F.os, "replace", replace)
    with pytest.raises(SystemExit):
        run_benchmark(out=out, res=["32x64"], cache_dir=tmp_path / "c", **FAST)
    monkeypatch.setattr(F.os, "replace", real)
    assert _set_of(out) == {"csv": "old-model8x8", "json": "old-model8x8", "md": "old-model"}


def test_rows_of_a_killed_run_are_kept_and_reported(tmp_path):
    """kill -9 during a run, then another run into the same folder: the killed run's finished rows are kept
    (renamed aside) and the new run says where; `report` of them is marked incomplete."""
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "asapbench", "run", *TINY, "--res", "32x64,32x64,64x64,64x128",
                             "--min-seconds", "2", "--out", str(out), "--cache-dir", str(tmp_path / "c")],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not [p for p in out.rglob("bench.partial.csv") if "asapnet-tiny" in p.read_text()]:
            assert proc.poll() is None, proc.communicate()
            assert time.time() - t0 < 240
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    (killed,) = [p for p in out.rglob("bench.partial.csv")]
    rows = killed.read_text()
    r = asapbench("run", *TINY, "--res", "32x64", "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    kept = [p for p in out.rglob("bench.partial.csv")]
    assert len(kept) == 1 and kept[0].read_text() == rows  # nothing deleted
    assert "killed" in r.stderr and str(kept[0]) in r.stderr
    rep = asapbench("report", str(kept[0].parent), "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr
    assert json.loads((tmp_path / "rep" / "bench.json").read_text())["complete"] is False
    assert "Incomplete run" in (tmp_path / "rep" / "bench.md").read_text()


# ---------------------------------------------------------------------------------------------
# item 4: report keeps the incomplete marker
# ---------------------------------------------------------------------------------------------
def test_report_of_an_incomplete_set_stays_incomplete(tmp_path):
    state = {"complete": False, "reason": "interrupted (SIGINT)", "cells_done": 1, "cells_total": 4}
    render_all([_row()], tmp_path / "half", run_state=state)
    render_all([_row("pix2pixhd-tiny")], tmp_path / "full", run_state={"complete": True})
    merge_report([tmp_path / "half"], tmp_path / "rep")
    obj = json.loads((tmp_path / "rep" / "bench.json").read_text())
    assert obj["complete"] is False and obj["incomplete"] == {k: state[k] for k in ("reason", "cells_done", "cells_total")}
    assert "Incomplete run: interrupted (SIGINT) after 1 of 4 cells" in (tmp_path / "rep" / "bench.md").read_text()
    merge_report([tmp_path / "full", tmp_path / "half" / "bench.csv"], tmp_path / "merged")
    obj = json.loads((tmp_path / "merged" / "bench.json").read_text())
    assert obj["complete"] is False and "interrupted (SIGINT)" in obj["incomplete"]["reason"]
    merge_report([tmp_path / "full"], tmp_path / "fine")
    assert json.loads((tmp_path / "fine" / "bench.json").read_text())["complete"] is True


def test_report_into_its_own_folder_keeps_the_marker_and_the_set(tmp_path):
    out = tmp_path / "o"
    render_all([_row()], out, run_state={"complete": False, "reason": "interrupted (SIGTERM)", "cells_done": 1,
                                         "cells_total": 3})
    r = asapbench("report", str(out), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "bench.json").read_text())["complete"] is False
    (earlier,) = out.glob("earlier-*")  # the set it read (plain files of the older layout), kept aside
    assert (out / "latest").resolve().name.startswith("report-")
    for folder in (out, earlier):
        assert json.loads((folder / "bench.json").read_text())["complete"] is False
        assert "Incomplete run: interrupted (SIGTERM) after 1 of 3 cells" in (folder / "bench.md").read_text()


# ---------------------------------------------------------------------------------------------
# item 5: deeply nested JSON
# ---------------------------------------------------------------------------------------------
def test_deeply_nested_run_json_is_one_line_on_resume(tmp_path):
    out = tmp_path / "run"
    r = asapbench("train", "--model", "asapnet-tiny", "--dataset", "synthetic", "--steps", "1", "--out", str(out),
                  "--device", "cpu")
    assert r.returncode == 0, r.stderr
    (out / "run.json").write_text("[" * 200_000 + "]" * 200_000)
    r = asapbench("train", "--out", str(out), "--resume", "--device", "cpu")
    assert_one_line_error(r, "run.json", "nested too deeply")


def test_deeply_nested_json_beside_a_checkpoint_or_a_csv_is_no_traceback(tmp_path):
    from asapbench.checkpoint import _run_config

    deep = tmp_path / "run.json"
    deep.write_text("{\"a\": " * 100_000 + "1" + "}" * 100_000)
    assert _run_config(tmp_path / "latest_net_G.pth", "asapnet-tiny") == (None, {})
    render_all([_row()], tmp_path / "set")
    (tmp_path / "set" / "bench.json").write_text("[" * 100_000 + "]" * 100_000)
    merge_report([tmp_path / "set"], tmp_path / "rep")  # the environment then comes from the rows
    assert read_csv(tmp_path / "rep" / "bench.csv") == [_row()]
    from asapbench.fsutil import read_json

    with pytest.raises(UserError, match="nested too deeply"):
        read_json(deep, "run.json")


# ---------------------------------------------------------------------------------------------
# item 6: hand-edited bench.csv, escaping
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column, value, words", [
    ("ms_median", "nan", ["not a finite number"]),
    ("ms_median", "1e400", ["not a finite number"]),
    ("ms_median", "-3.5", ["negative"]),
    ("height", "-32", ["less than 1"]),
])
def test_report_of_a_hand_edited_csv_names_file_line_and_column(tmp_path, column, value, words):
    p = write_csv([_row(), _row("pix2pixhd-tiny", 5.0)], tmp_path / "bench.csv")
    lines = p.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index(column)] = value
    lines[2] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    r = asapbench("report", str(p), "--out", str(tmp_path / "rep"))
    assert_one_line_error(r, str(p), "line 3", repr(column), repr(value), *words)
    assert not (tmp_path / "rep").exists()


def test_negative_or_infinite_times_are_never_ranked():
    md = markdown([_row("asapnet-tiny", -5.0), _row("spade-tiny", float("inf")), _row("pix2pixhd-tiny", 7.0)])
    fastest = md.split("## Fastest per resolution")[1].split("##")[0]
    assert "**pix2pixhd-tiny torch fp32**" in fastest and "asapnet-tiny" not in fastest and "spade-tiny" not in fastest


def test_formula_cells_are_escaped_and_read_back_as_written(tmp_path):
    texts = ["=HYPERLINK(\"http://x\")", "+1+2", "-cmd", "@SUM(A1)", "'quoted", "\tTab", "plain"]
    rows = [_row(f"m{i}", note=t, preset=t) for i, t in enumerate(texts)]
    p = write_csv(rows, tmp_path / "bench.csv")
    import csv

    with p.open(newline="") as f:
        for rec in csv.DictReader(f):
            for col in ("note", "preset"):
                assert not rec[col].startswith(("=", "+", "-", "@", "\t")), rec[col]
    assert read_csv(p) == rows


def test_pipes_and_line_breaks_do_not_break_the_markdown_tables():
    rows = [_row("asapnet-tiny", 2.0, preset="a|b", note="line one\nline two | more"),
            _row("pix2pixhd-tiny", 5.0, cpu_model="CPU\n# heading")]
    md = markdown(rows)
    assert "\n# heading" not in md and "\nline two" not in md
    for block in md.split("\n\n"):
        table = [ln for ln in block.splitlines() if ln.startswith("|")]
        if table:
            widths = {ln.replace("\\|", "").count("|") for ln in table}
            assert len(widths) == 1, table
    assert "a\\|b" in md


# ---------------------------------------------------------------------------------------------
# item 7: the --out lock
# ---------------------------------------------------------------------------------------------
def test_a_lock_file_naming_a_live_unrelated_pid_is_taken_over(tmp_path):
    from asapbench.fsutil import FolderLock

    (tmp_path / FolderLock.NAME).write_text(json.dumps({"pid": os.getppid(), "started": "then"}))
    with FolderLock(tmp_path) as lock:
        assert lock.held and lock.stale["pid"] == os.getppid()
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists()


def test_a_held_lock_refuses_in_one_line_naming_folder_and_pid(tmp_path):
    from asapbench.fsutil import FolderLock

    code = ("import sys; from asapbench.fsutil import FolderLock\n"
            "try:\n    FolderLock(sys.argv[1], '--out').acquire()\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    with FolderLock(tmp_path, "--out"):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=ENV, capture_output=True, text=True,
                           timeout=60)
    (line,) = r.stdout.splitlines()
    assert line.startswith("UserError") and repr(str(tmp_path)) in line and f"pid {os.getpid()}" in line
    assert "--out" in line


RACE = r"""
import json, os, sys, time
from asapbench.errors import UserError
from asapbench.fsutil import FolderLock
root, trials, t0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for k in range(trials):
    folder = os.path.join(root, str(k))
    start = t0 + k * 0.6
    time.sleep(max(0.0, start - time.time() - 0.01))
    while time.time() < start:  # the last 10 ms spinning: all processes try within about a millisecond
        pass
    lock = FolderLock(folder)
    try:
        lock.acquire()
    except UserError:
        continue
    with open(os.path.join(folder, "holders"), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.3)
    lock.release()
"""


def test_processes_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    """8 processes x 10 trials through the real lock code, each trial starting from a lock file a killed run
    left: in every trial exactly one process holds the lock."""
    n, trials = 8, 10
    for k in range(trials):
        (tmp_path / str(k)).mkdir()
        (tmp_path / str(k) / ".asapbench.lock").write_text(json.dumps({"pid": 2**22 + 12345, "started": "then"}))
    t0 = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(trials), str(t0)], env=ENV, cwd=REPO)
             for _ in range(n)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    holders = [len((tmp_path / str(k) / "holders").read_text().split()) for k in range(trials)]
    assert holders == [1] * trials


# ---------------------------------------------------------------------------------------------
# item 8: the git sha probe runs no git hook or config
# ---------------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", "core.fsmonitor=", *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def _repo_with_fsmonitor(repo: Path, marker: Path) -> None:
    """A git repository whose core.fsmonitor hook writes ``marker`` when git runs it."""
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "x")
    hook = repo / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    _git(repo, "config", "core.fsmonitor", str(hook))


def _probe(package_parent: Path) -> str:
    code = "from asapbench.bench.system import git_sha; print(git_sha())"
    env = {**ENV, "PYTHONPATH": str(package_parent)}
    r = subprocess.run([sys.executable, "-c", code], cwd=package_parent, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_package_installed_inside_an_unrelated_repo_records_no_sha_and_runs_no_hook(tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "hook-ran"
    site = repo / "venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    shutil.copytree(REPO / "asapbench", site / "asapbench", ignore=shutil.ignore_patterns("__pycache__"))
    _repo_with_fsmonitor(repo, marker)
    assert _probe(site) == "None"
    assert not marker.exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_packages_own_repo_gives_its_sha_without_running_its_fsmonitor(tmp_path):
    repo, marker = tmp_path / "asapbench-src", tmp_path / "hook-ran"
    repo.mkdir()
    shutil.copytree(REPO / "asapbench", repo / "asapbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
    _repo_with_fsmonitor(repo, marker)
    sha = _git(repo, "rev-parse", "--short=12", "HEAD")
    assert _probe(repo) == sha
    (repo / "asapbench" / "errors.py").write_text((repo / "asapbench" / "errors.py").read_text() + "\n# edit\n")
    assert _probe(repo) == sha + "+dirty"
    assert not marker.exists()
