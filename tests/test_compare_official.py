"""scripts/compare_official.py and asapbench/bench/alternate.py: the ratio arithmetic, the alternation order
(official first in every round) with real tiny modules, bad input, and (with ASAPBENCH_OFFICIAL pointing
at a checkout of tamarott/ASAPNet) a real one-round comparison at cityscapes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asapbench.bench.alternate import alternate, compare
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_official.py"
sys.path.insert(0, str(REPO / "scripts"))
import compare_official  # noqa: E402


def script(*args: str, timeout: float = 120, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def test_compare_statistics_and_ratios_on_known_numbers():
    official = [[10.0, 12.0], [20.0, 22.0]]  # round medians 11 and 21
    ours = [[5.0, 6.0], [4.0, 4.0]]  # round medians 5.5 and 4
    c = compare(official, ours)
    assert c.baseline.median == 16.0 and c.baseline.min == 10.0 and c.baseline.n == 4
    assert c.other.median == 4.5 and c.other.min == 4.0
    assert c.baseline.cov == pytest.approx(math.sqrt(104 / 3) / 16)  # sample std (ddof=1) / mean
    assert c.other.cov == pytest.approx(math.sqrt((0.25**2 + 1.25**2 + 0.75**2 + 0.75**2) / 3) / 4.75)
    assert c.ratio_median == pytest.approx(16 / 4.5)
    assert c.ratio_min == pytest.approx(10 / 4)
    assert c.round_ratios == pytest.approx((2.0, 5.25))
    assert (c.round_ratio_min, c.round_ratio_max) == pytest.approx((2.0, 5.25))
    assert c.rounds == 2
    d = c.as_dict()
    assert d["ratio_median"] == c.ratio_median and d["round_ratios"] == list(c.round_ratios)


def test_compare_rejects_unequal_or_empty_rounds():
    with pytest.raises(ValueError, match="same number"):
        compare([[1.0], [2.0]], [[1.0]])
    with pytest.raises(ValueError, match="at least one"):
        compare([[1.0], []], [[1.0], [1.0]])


# --------------------------------------------------------------------------------------------
# alternation order, with real tiny modules
# --------------------------------------------------------------------------------------------
def _tiny(name: str):
    from asapbench.inputs import example_input
    from asapbench.registry import create_generator

    torch.manual_seed(0)
    m = create_generator(name, "tiny").prepare_for_inference()
    return m, example_input(m, 1, 64, 128, seed=0)


class _Tupled(torch.nn.Module):
    """An asapbench generator answering like the official one: (image, low-res output)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x), None


def test_fp32_agreement_judges_against_a_float64_forward_of_the_official_module(one_thread):
    """Outputs further apart than 1e-4 pass only when asapbench is as close to float64 as the official fp32."""
    official, x = _tiny("asapnet-tiny")
    official.lowres_conv = "direct"
    ours = create_generator_like(official, "winograd4")
    with torch.inference_mode():
        a, b = _Tupled(official)(x)[0], ours(x)
    ok, why = compare_official.fp32_agreement(_Tupled(official), x, a, b)
    assert ok and "float64" in why
    ok, why = compare_official.fp32_agreement(_Tupled(official), x, a, b + 3e-3)  # a real disagreement
    assert not ok and "allowed" in why


class _KernelMadeInForward(torch.nn.Module):
    """Like the official Facades generators' tent downsampler: a float kernel made with ``torch.Tensor(...)`` inside
    ``forward`` (neither parameter nor buffer of the module), so ``Module.double()`` alone cannot reach it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        kernel = torch.Tensor([[[[1.0]]]]).repeat(x.shape[1], 1, 1, 1)
        return self.m(torch.nn.functional.conv2d(x, kernel, groups=x.shape[1])), None


def test_fp32_agreement_runs_official_modules_that_make_float_tensors_in_forward(one_thread):
    import copy

    official, x = _tiny("asapnet-tiny")
    official.lowres_conv = "direct"
    wrapped = _KernelMadeInForward(official)
    with pytest.raises(RuntimeError):  # what Module.double() alone gives (the facades1024 run stopped on it)
        copy.deepcopy(wrapped).double()(x.double())
    assert compare_official.float64_forward(wrapped, x)[0].dtype == torch.float64
    assert torch.get_default_dtype() == torch.float32  # restored
    ours = create_generator_like(official, "winograd4")
    with torch.inference_mode():
        a, b = wrapped(x)[0], ours(x)
    ok, why = compare_official.fp32_agreement(wrapped, x, a, b)
    assert ok and "float64" in why


def create_generator_like(model, lowres_conv):
    from asapbench.registry import create_generator

    twin = create_generator("asapnet-tiny", "tiny", lowres_conv=lowres_conv).prepare_for_inference()
    twin.load_state_dict(model.state_dict())
    return twin


def test_alternate_runs_every_side_in_order_each_round(one_thread):
    calls: list[str] = []
    sides = []
    for name in ("asapnet-tiny", "pix2pixhd-tiny", "spade-tiny"):
        m, x = _tiny(name)
        m.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))

        def run(m=m, x=x):
            with torch.inference_mode():
                m(x)

        sides.append((name, run))
    heard: list[tuple] = []
    out = alternate(sides, 3, warmup=1, iters=2, on_run=lambda *a: heard.append(a))
    per_round = ["asapnet-tiny"] * 3 + ["pix2pixhd-tiny"] * 3 + ["spade-tiny"] * 3
    assert calls == per_round * 3
    assert [(r, n) for r, n, _p, _i in heard] == [(r, n) for r in (1, 2, 3) for n in per_round]
    assert [p for _r, _n, p, _i in heard[:3]] == ["warmup", "timed", "timed"]
    assert set(out) == {"asapnet-tiny", "pix2pixhd-tiny", "spade-tiny"}
    assert all(len(rounds) == 3 and all(len(r) == 2 and min(r) > 0 for r in rounds) for rounds in out.values())


def test_script_times_the_official_module_first_in_every_round(one_thread, tmp_path):
    """compare_official.time_preset with a real tiny 'official' module and two real asapbench torch runners."""
    from asapbench.bench import backends as B

    calls: list[str] = []
    official, x = _tiny("asapnet-tiny")
    official.register_forward_hook(lambda *a: calls.append("official"))
    ours, _ = _tiny("asapnet-tiny")
    sides = []
    for backend in ("torch", "torch"):  # two runners of the same backend, told apart by their hooks
        cell = B.Cell(model=ours, x=x, height=64, width=128, batch=1, backend=backend, precision="fp32", device="cpu",
                      threads=1, cache_dir=tmp_path)
        runner = B.make_runner(cell)
        runner.prepare()
        runner.open()
        tag = f"ours{len(sides)}"
        runner.model.register_forward_hook(lambda *a, tag=tag: calls.append(tag))
        form = "winograd" if not sides else "winograd4"  # the second side: another low-res conv form
        sides.append(compare_official.Side(tag, "fp32", runner, form, 1e-6))
    prep = compare_official.Prepared("tiny", 64, 128, official, ours, x, 0.0, sides, [])
    try:
        times = compare_official.time_preset(prep, rounds=2, warmup=1, iters=1)
    finally:
        for side in sides:
            side.runner.close()
    assert calls == (["official"] * 2 + ["ours0"] * 2 + ["ours1"] * 2) * 2
    assert list(times) == ["official", "ours0 fp32", "ours1 fp32 winograd4"]
    rows = compare_official.rows_for(prep, times, threads=1, iters=1)
    assert [(r["backend"], r["lowres_conv"], r["status"], r["rounds"]) for r in rows] == [
        ("ours0", "winograd", "ok", 2), ("ours1", "winograd4", "ok", 2)]
    assert compare_official.table_rows(rows)[1][1][2] == "ours1 fp32 (winograd4)"
    assert rows[0]["ratio_median"] == pytest.approx(rows[0]["official_median_ms"] / rows[0]["asapbench_median_ms"])


def test_a_side_names_a_pixelwise_formulation_other_than_the_fast_one():
    side = compare_official.Side("torch", "fp32", None, "winograd4", 1e-6, "fused")
    assert side.label == "torch fp32 winograd4 fused"
    assert compare_official.Side("torch", "fp32", None, "winograd", 1e-6).label == "torch fp32"
    row = {"backend": "torch", "precision": "fp32", "lowres_conv": "winograd", "pixelwise": "fused"}
    assert compare_official._side_name(row) == "torch fp32 (winograd, fused pixelwise)"
    assert compare_official._side_name({**row, "pixelwise": "fast"}) == "torch fp32 (winograd)"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def test_official_commit_is_read_from_dot_git(tmp_path):
    sha = "f27f2022968810527603e2bcc51ea3e5f50c1c06"
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert compare_official.official_commit(tmp_path) == sha
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert compare_official.official_commit(tmp_path) == sha
    (git / "HEAD").write_text(sha[::-1] + "\n")  # detached
    assert compare_official.official_commit(tmp_path) == sha[::-1]
    assert compare_official.official_commit(tmp_path / "nowhere").startswith("unknown")


def test_public_argv_names_the_checkout_by_its_folder_only():
    assert compare_official.public_argv(["--official", "/home/me/src/ASAPNet", "--rounds", "7"]) == \
        ["--official", "ASAPNet", "--rounds", "7"]
    assert compare_official.public_argv(["--official=/x/y/ASAPNet/"]) == ["--official=ASAPNet"]


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda t: str(t / "missing"), ["--official", "does not exist", "git clone https://github.com/tamarott/ASAPNet"]),
    (lambda t: str(t), ["--official", "no models/networks/generator.py", "git clone"]),
    (lambda t: (t / "f.txt").write_text("x") and str(t / "f.txt"), ["--official", "is a file"]),
])
def test_bad_official_path_is_one_line_error(tmp_path, make, words):
    out = tmp_path / "out"
    r = script("--official", make(tmp_path), "--out", str(out))
    assert_one_line_error(r, *words)
    assert not out.exists()


def test_unknown_preset_and_missing_official_are_one_line_errors(tmp_path):
    r = script("--official", str(tmp_path), "--presets", "cityscapes,gotham", "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "gotham", "facades1024")
    r = script("--rounds", "1")
    assert_one_line_error(r, "--official")
    r = script("--official", str(tmp_path), "--lowres-conv", "winograd,fft", "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "--lowres-conv", "'fft'", "winograd4")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("backends, words", [("torch,warp-drive", ["warp-drive", "onnxruntime"]),
                                             ("tensorrt", ["no asapbench backend", "--device cuda", "--backends torch"])])
def test_backends_that_cannot_run_are_one_line_errors(tmp_path, backends, words):
    root = tmp_path / "ASAPNet"  # enough of a checkout to pass the path check
    (root / "models" / "networks").mkdir(parents=True)
    (root / "models" / "networks" / "generator.py").write_text("class ASAPNetsGenerator: pass\n")
    out = tmp_path / "out"
    r = script("--official", str(root), "--backends", backends, "--out", str(out))
    assert_one_line_error(r, *words)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# the real thing (needs a checkout of tamarott/ASAPNet)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_against_the_official_checkout_cityscapes_one_round(tmp_path):
    official = os.environ.get("ASAPBENCH_OFFICIAL")
    if not official:
        pytest.skip("ASAPBENCH_OFFICIAL is not set (point it at a checkout of https://github.com/tamarott/ASAPNet)")
    out = tmp_path / "out"
    r = script("--official", official, "--presets", "cityscapes", "--rounds", "1", "--iters", "1", "--warmup", "0",
               "--threads", "1", "--backends", "torch,onnxruntime", "--pixelwise", "fast,fused", "--out", str(out),
               "--cache-dir", os.environ.get("ASAPBENCH_CACHE") or str(tmp_path / "cache"), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "speed-up" in r.stdout and "onnxruntime" in r.stdout
    data = json.loads((out / "compare.json").read_text())
    assert data["complete"] is True
    assert len(data["environment"]["official_commit"]) == 40
    ok = [row for row in data["rows"] if row["status"] == "ok"]
    assert sorted((row["backend"], row["precision"], row["pixelwise"]) for row in ok) == [
        ("onnxruntime", "fp32", "fast"), ("torch", "fp32", "fast"), ("torch", "fp32", "fused")]
    for row in ok:
        assert row["resolution"] == "256x512" and row["rounds"] == 1
        # above 1e-4 only where the script's float64 check passed (the default Winograd low-res convs)
        assert row["max_abs_diff"] <= 10 * compare_official.MAX_ABS_DIFF
        assert row["ratio_median"] == pytest.approx(row["official_median_ms"] / row["asapbench_median_ms"])
    times = data["times_ms"]["cityscapes"]
    assert list(times) == ["official", "torch fp32", "onnxruntime fp32", "torch fp32 fused"]
    assert "| cityscapes | 256x512 | onnxruntime fp32 (winograd) |" in (out / "compare.md").read_text()
    assert "| cityscapes | 256x512 | torch fp32 (winograd, fused pixelwise) |" in (out / "compare.md").read_text()
    assert (out / "compare.csv").read_text().startswith("preset,resolution,backend,precision,lowres_conv,pixelwise,status")
    assert all(row["lowres_conv"] == "winograd" for row in ok)  # the default form
