"""Issue 18, "Nothing lost, nothing forged, nothing run": the cache's marker and lock (`cache --clear`
deletes only asapbench's files and never a file in progress), cached exports that no longer hold the
model (forged graphs, external data outside the folder), malformed sidecars, and full disks (a real
tmpfs; root only). Real exports of asapnet-tiny at 32x64, real onnxruntime, real `python -m asapbench`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
FAST = ["--warmup", "1", "--iters", "3", "--min-seconds", "0", "--e2e-iters", "1", "--no-export-check"]
H, W = 32, 64
STEM = f"asapnet-tiny-tiny-{H}x{W}-fp32"


def asapbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asapbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def tiny_model():
    """asapnet-tiny at 32x64 as `export` and `run` build it (seeded, weights spread)."""
    from asapbench.registry import build_for_resolution
    from asapbench.weights import spread_for_resolution

    m = build_for_resolution("asapnet-tiny", H, W, seed=0)
    m.prepare_for_inference()
    spread_for_resolution(m, H, W, seed=0)
    return m


@pytest.fixture(scope="module")
def gated_export(tmp_path_factory):
    """A folder holding asapnet-tiny's gated fp32 export at 32x64 and its sidecar (copy it before changing it)."""
    from exporters.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("gated")
    r = export_onnx(tiny_model(), H, W, d, "fp32", check=True, reuse=False)
    assert r.parity["passed"]
    return d


def copy_export(src: Path, dst: Path) -> tuple[Path, Path]:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, dst / f.name)
    return dst / f"{STEM}.onnx", dst / f"{STEM}.json"


def reseal(onnx_path: Path, sidecar_path: Path) -> None:
    """Make the sidecar vouch for the file as it is now (what a forger does)."""
    from asapbench.fsutil import sha256_file

    side = json.loads(sidecar_path.read_text())
    side["onnx_sha256"] = sha256_file(onnx_path)
    side["onnx_bytes"] = onnx_path.stat().st_size
    sidecar_path.write_text(json.dumps(side))


# ---------------------------------------------------------------------------------------------
# 1. the marker: clear deletes only asapbench's files
# ---------------------------------------------------------------------------------------------
def _project(root: Path) -> dict[str, bytes]:
    files = {"thesis.tex": b"\\documentclass{article}", "src/main.py": b"print(1)\n", "data/raw.bin": b"\0" * 5000,
             f"onnx/{STEM}.onnx": b"not ours, but named like ours"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_clear_refuses_a_folder_without_the_marker_that_holds_other_files(tmp_path):
    files = _project(tmp_path / "proj")
    r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(tmp_path / "proj"))
    assert_one_line_error(r, "not an asapbench cache", str(tmp_path / "proj"), "nothing deleted", "--cache-dir")
    assert _tree(tmp_path / "proj") == files  # every file kept, byte for byte


def _own_files(root: Path) -> list[str]:
    own = [f"onnx/{STEM}.onnx", f"onnx/{STEM}.json", f"onnx/{STEM}.parity-failed.json",
           f"onnx/.{STEM}.onnx.k3j_x9a1.tmp", f"engines/{STEM}.0123456789ab.engine",
           f"engines/{STEM}.0123456789ab.engine.json", "engines/timing-trt10.13.0.35-NVIDIA-H100-sm9.0.cache",
           f"engines/runtime-cache/{STEM}.0123456789ab.NVIDIA-GeForce-RTX-4090.rtcache"]
    for rel in own:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 1000)
    return own


def test_clear_in_a_marked_cache_deletes_only_asapbench_files(tmp_path):
    from exporters.cache import MARKER, write_marker

    root = tmp_path / "cache"
    assert write_marker(root)
    _own_files(root)
    foreign = {"notes.txt": b"mine", "onnx/my-model.onnx": b"my own graph", "engines/x.engine.bak": b"b",
               "photos/cat.png": b"png"}
    for rel, data in foreign.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "onnx" / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    (tmp_path / "outside.onnx").write_bytes(b"outside")
    r = asapbench("cache", "--cache-dir", str(root))
    assert r.returncode == 0 and f"onnx/{STEM}.onnx" in r.stdout and "notes.txt" not in r.stdout
    r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(root))
    assert r.returncode == 0, r.stderr
    assert "deleted" in r.stdout
    left = _tree(root)
    assert {k: v for k, v in left.items() if k != MARKER} == {**foreign, "onnx/link.onnx": b"outside"}
    assert (root / "onnx" / "link.onnx").is_symlink() and (tmp_path / "outside.onnx").read_bytes() == b"outside"
    assert (root / MARKER).is_file() and not (root / "engines" / "runtime-cache").exists()


def test_clear_adopts_an_unmarked_folder_of_asapbench_files_only(tmp_path):
    from exporters.cache import has_marker

    root = tmp_path / "old-cache"
    _own_files(root)
    r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(root))
    assert r.returncode == 0, r.stderr
    assert has_marker(root) and not (root / "onnx").exists() and not (root / "engines").exists()


def test_run_marks_its_cache_folder(tmp_path):
    from asapbench.commands.run import run_benchmark
    from exporters.cache import has_marker

    cache = tmp_path / "c"
    rows = run_benchmark(out=tmp_path / "o", models=["asapnet-tiny"], res=[f"{H}x{W}"], backends=["onnxruntime"],
                         cache_dir=cache, progress=False, warmup=1, iters=3, min_seconds=0, e2e_iters=1,
                         export_check=False)
    assert rows[0].status == "ok", rows[0].note
    assert has_marker(cache) and (cache / "onnx" / f"{STEM}.onnx").is_file()


# ---------------------------------------------------------------------------------------------
# 2. the lock: clear never deletes an export in progress
# ---------------------------------------------------------------------------------------------
CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.test_cache_safety import tiny_model, H, W
from asapbench.bench.backends import Cell
from asapbench.bench.runner_ort import export_for

cache, go = Path(sys.argv[1]), Path(sys.argv[2])
def progress(stage):
    if stage == "onnx.checker":  # the file is written under its temporary name
        print("WRITING", flush=True)
        while not go.exists():
            time.sleep(0.05)
m = tiny_model()
cell = Cell(model=m, x=None, height=H, width=W, batch=1, backend="onnxruntime", precision="fp32", device="cpu",
            cache_dir=cache, export_check=False, progress=progress)
r = export_for(cell)
print("DONE", r.onnx_path.is_file(), r.reused, flush=True)
"""


def test_clear_refuses_while_an_export_is_writing_the_cache(tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(cache), str(go)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = child.stdout.readline()
        assert line.strip() == "WRITING", (line, child.stderr.read() if child.poll() is not None else "")
        tmps = list((cache / "onnx").glob(".*.tmp"))
        assert len(tmps) == 1
        r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(cache))
        assert_one_line_error(r, "in use by another asapbench process", f"pid {child.pid}", "nothing deleted")
        assert tmps[0].is_file()  # the file in progress is still there
    finally:
        go.touch()
        out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert "DONE True False" in out
    r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(cache))  # now nobody holds the cache
    assert r.returncode == 0, r.stderr
    assert not (cache / "onnx").exists()


# ---------------------------------------------------------------------------------------------
# 3. a forged cached ONNX is exported again
# ---------------------------------------------------------------------------------------------
def _zeros_graph(path: Path, keep_weights: bool = False) -> None:
    """A 2-node graph with the export's input and output that returns zeros (``keep_weights``: carrying the
    real initialisers, unused)."""
    import onnx
    from onnx import TensorProto, helper

    old = onnx.load(str(path))
    nodes = [helper.make_node("Slice", ["label", "s", "e", "a"], ["x3"]),
             helper.make_node("Mul", ["x3", "zero"], ["image"])]
    inits = [helper.make_tensor("s", TensorProto.INT64, [1], [0]), helper.make_tensor("e", TensorProto.INT64, [1], [3]),
             helper.make_tensor("a", TensorProto.INT64, [1], [1]), helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    if keep_weights:
        inits += list(old.graph.initializer)
    g = helper.make_graph(nodes, "forged", [old.graph.input[0]], [old.graph.output[0]], inits)
    forged = helper.make_model(g, opset_imports=old.opset_import)
    forged.metadata_props.extend(old.metadata_props)  # it even claims the weights
    onnx.save(forged, str(path))


@pytest.mark.parametrize("check, keep_weights", [(True, False), (False, False), (True, True)])
def test_a_forged_cached_onnx_is_exported_again(gated_export, tmp_path, check, keep_weights):
    """A forged graph without the weights fails the initialiser check; one carrying them, the parity sample."""
    from exporters.onnx_export import export_onnx
    from exporters.ort import OrtRunner

    onnx_path, side = copy_export(gated_export, tmp_path / "onnx")
    _zeros_graph(onnx_path, keep_weights)
    reseal(onnx_path, side)
    forged = onnx_path.read_bytes()
    m = tiny_model()
    r = export_onnx(m, H, W, tmp_path / "onnx", "fp32", check=check)
    assert not r.reused and onnx_path.read_bytes() != forged
    from exporters.validate import parity_inputs

    x = parity_inputs(m, H, W, count=1)[0][1]
    out = OrtRunner(str(onnx_path)).infer(x.numpy())
    assert float(abs(out).max()) > 0.05  # the model's output, not zeros


# ---------------------------------------------------------------------------------------------
# 4. external data outside the file's folder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("location", ["/etc/passwd", "../../secret.bin"])
def test_external_data_outside_the_folder_is_refused_and_the_entry_replaced(gated_export, tmp_path, location):
    import onnx
    from onnx import TensorProto

    from asapbench.errors import UserError
    from exporters.onnx_export import export_onnx

    onnx_path, side = copy_export(gated_export, tmp_path / "a" / "b" / "onnx")
    (tmp_path / "a" / "secret.bin").write_bytes(b"\0" * 4096)
    proto = onnx.load(str(onnx_path))
    t = max(proto.graph.initializer, key=lambda i: len(i.raw_data))
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    onnx.save(proto, str(onnx_path))
    reseal(onnx_path, side)
    bad = shutil.copy2(onnx_path, tmp_path / "a" / "b" / "bad.onnx")
    r = export_onnx(tiny_model(), H, W, onnx_path.parent, "fp32", check=False)
    assert not r.reused
    from exporters.onnx_export import external_data, verify_onnx_file

    assert external_data(onnx.load(str(onnx_path), load_external_data=False)) == []
    with pytest.raises(UserError, match="outside the file's folder"):
        verify_onnx_file(bad)


# ---------------------------------------------------------------------------------------------
# 5. sidecars of the wrong shape, too deep, or a device
# ---------------------------------------------------------------------------------------------
BAD_SIDECARS = {
    "list": lambda p: p.write_text("[1, 2, 3]"),
    "deep": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "wrong-types": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "parity": {"passed": True, "samples": [5]}})),
    "dev-zero": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
}


@pytest.mark.parametrize("bad", sorted(BAD_SIDECARS))
def test_a_malformed_onnx_sidecar_means_export_again(gated_export, tmp_path, bad):
    from exporters.cache import onnx_sidecar_problem
    from exporters.onnx_export import export_onnx, load_sidecar

    onnx_path, side = copy_export(gated_export, tmp_path / "onnx")
    BAD_SIDECARS[bad](side)
    obj = load_sidecar(side)
    assert obj is None or onnx_sidecar_problem(obj)
    r = export_onnx(tiny_model(), H, W, onnx_path.parent, "fp32", check=False)
    assert not r.reused and not side.is_symlink() and json.loads(side.read_text())["file"] == onnx_path.name


def test_export_with_a_list_sidecar_is_no_traceback(gated_export, tmp_path):
    onnx_path, side = copy_export(gated_export, tmp_path / "out")
    side.write_text("[1, 2, 3]")
    r = asapbench("export", "--model", "asapnet-tiny", "--res", f"{H}x{W}", "--out", str(tmp_path / "out"), "--no-check")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and f"wrote {onnx_path}" in r.stdout


@pytest.mark.parametrize("bad", sorted(BAD_SIDECARS))
def test_a_malformed_engine_sidecar_is_a_rebuild_or_one_line(tmp_path, bad):
    from asapbench.errors import UserError
    from exporters.cache import cache_lookup, engine_key
    from exporters.trt import check_engine_file, read_sidecar

    key = engine_key("a" * 64, {"flavour": "rtx", "tensorrt": "1.2", "tensorrt_cuda": "cu12", "targets": [86]}, {})
    engine = tmp_path / f"{STEM}.0123456789ab.engine"
    engine.write_bytes(b"engine")
    side = tmp_path / f"{engine.name}.json"
    side.write_text("{}")
    BAD_SIDECARS[bad](side)
    got, why = cache_lookup(engine, side, key)
    assert got is None and "sidecar" in why
    assert read_sidecar(engine) is None
    with pytest.raises(UserError, match="unreadable or malformed"):
        check_engine_file(engine)


def test_read_json_refuses_fifos_and_oversized_files(tmp_path):
    from exporters.cache import read_json

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert read_json(fifo) == (None, "not a regular file")  # returns at once: no writer is waited for
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 2000}))
    obj, why = read_json(big, max_bytes=1000)
    assert obj is None and "more than the" in why  # the cap, in the words of fsutil.read_json


# ---------------------------------------------------------------------------------------------
# 6. full disks (a real tmpfs)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, size: str) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or 'needs root'})")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _needed_bytes(line: str) -> float:
    m = re.search(r"about ([\d.,]+) (KiB|MiB|GiB) needed", line)
    assert m, line
    return float(m.group(1).replace(",", "")) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[m.group(2)]


def test_export_on_a_full_disk_names_the_folder_its_real_size_and_out(gated_export, tmpfs):
    disk = tmpfs("disk", "128k")
    (disk / "keep.txt").write_text("written before")
    out = disk / "exports"
    r = asapbench("export", "--model", "asapnet-tiny", "--res", f"{H}x{W}", "--out", str(out), "--no-check")
    assert_one_line_error(r, "no space left", str(out), "--out", "needed")
    assert "--cache-dir" not in r.stderr
    size = (gated_export / f"{STEM}.onnx").stat().st_size
    assert _needed_bytes(r.stderr) >= size  # the real export, not its weights alone
    assert (disk / "keep.txt").read_text() == "written before"
    assert not out.exists() or list(out.iterdir()) == []  # no temporary file left


def test_run_cache_on_a_full_disk_names_the_real_export_size(gated_export, tmp_path, tmpfs):
    cache = tmpfs("cache", "128k") / "c"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", f"{H}x{W}", "--backends", "onnxruntime",
                  "--out", str(tmp_path / "o"), "--cache-dir", str(cache), *FAST)
    assert_one_line_error(r, "no space left", str(cache), "--cache-dir", "needed")
    assert _needed_bytes(r.stderr) >= (gated_export / f"{STEM}.onnx").stat().st_size


def test_run_out_on_a_100_percent_full_disk_names_the_folder_and_leaves_no_lock(tmp_path, tmpfs):
    disk = tmpfs("full", "64k")
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    out = disk / "o"
    r = asapbench("run", "--models", "asapnet-tiny", "--res", f"{H}x{W}", "--backends", "torch",
                  "--out", str(out), "--cache-dir", str(tmp_path / "c"), *FAST)
    assert_one_line_error(r, "no space left", str(out), "--out", "needed")
    assert not (out / ".asapbench.lock").exists()
    assert (disk / "filler").stat().st_size > 0  # what was there stays


def test_the_lock_holder_is_named_and_the_lock_needs_no_file(tmp_path):
    from exporters.cache import CacheBusy, CacheLock

    root = tmp_path / "c"
    root.mkdir()
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from exporters.cache import CacheLock; "
            "CacheLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(root), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with CacheLock(root):  # shared beside shared
            pass
        t0 = time.time()
        with pytest.raises(CacheBusy, match=f"pid {child.pid}"):
            CacheLock(root, exclusive=True).acquire(blocking=False)
        assert time.time() - t0 < 5
    finally:
        child.kill()
        child.wait()
    with CacheLock(root, exclusive=True):  # the lock went with the process
        pass
    assert list(root.iterdir()) == []


def test_an_engine_on_a_full_disk_names_the_folder_its_size_and_the_option(gated_export, tmpfs):
    pytest.importorskip("tensorrt_rtx")
    from asapbench.fsutil import DiskFull
    from exporters.trt import build_engine

    disk = tmpfs("engines", "64k")
    with pytest.raises(DiskFull) as e:
        build_engine(gated_export / f"{STEM}.onnx", disk, flavour="rtx", targets="86", option="--out")
    msg = str(e.value)
    assert "no space left" in msg and str(disk) in msg and "--out" in msg and "--cache-dir" not in msg
    assert _needed_bytes(msg) > 64 * 2**10
    assert [p for p in disk.iterdir() if p.name.endswith(".engine") or p.name.endswith(".tmp")] == []


def test_clear_deletes_openvino_compiled_models_and_their_folders(tmp_path):
    """OpenVINO's compiled-model cache (openvino/<export stem>.<sha12>/<n>.blob) is asapbench's: cleared with
    its folders; a foreign file beside it in openvino/ is refused like any other."""
    root = tmp_path / "c"
    d = root / "openvino" / "asapnet-tiny-tiny-64x128-fp32.0123456789ab"
    d.mkdir(parents=True)
    (d / "1209835518717418275.blob").write_bytes(b"x" * 100)
    from exporters.cache import write_marker

    write_marker(root)
    r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(root))
    assert r.returncode == 0, r.stderr
    assert not (root / "openvino").exists()
    (root / "openvino").mkdir()
    (root / "openvino" / "notes.txt").write_text("mine")
    r = asapbench("cache", "--clear", "--yes", "--cache-dir", str(root))
    assert (root / "openvino" / "notes.txt").read_text() == "mine"
