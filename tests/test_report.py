"""The record type and its renderings: CSV round trip, markdown tables and speed-ups, JSON, plot, merge."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asapbench.errors import UserError
from asapbench.report import (
    COLUMNS,
    BenchRow,
    frame,
    markdown,
    merge_report,
    read_csv,
    read_frame,
    render_all,
    write_csv,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _row(model, h, w, ms, backend="torch", status="ok", **kw):
    base = {"model": model, "preset": "p", "backend": backend, "precision": "fp32", "device": "cpu", "height": h,
            "width": w, "params": 1_000_000, "macs": int(5e9), "gmacs": 5.0, "status": status, "cpu_model": "Test CPU",
            "torch_version": "2.x"}
    if status == "ok":
        base.update(ms_median=ms, ms_mean=ms * 1.01, ms_p90=ms * 1.1, ms_p99=ms * 1.2, ms_min=ms * 0.9, ms_max=ms * 1.3,
                    ms_std=ms * 0.01, cov=0.01, iters=5, warmup_iters=2, e2e_ms_median=ms + 1, peak_mem_mib=100.0,
                    mem_kind="rss_peak_delta", img_per_s=1e3 / ms)
    base.update(kw)
    return BenchRow(**base)


@pytest.fixture
def rows():
    return [
        _row("asapnet", 256, 512, 10.0),
        _row("pix2pixhd", 256, 512, 60.0),
        _row("spade", 256, 512, 180.0),
        _row("asapnet", 512, 512, 20.0),
        _row("pix2pixhd", 512, 512, 130.0),
        _row("spade", 512, 512, 0, status="oom", note="out of memory"),
        _row("asapnet", 256, 512, 8.0, backend="onnxruntime"),
        _row("spade", 256, 512, 100.0, backend="onnxruntime", cov=0.12, note="CoV 12.0% > 5%: noisy timing"),
    ]


def test_csv_round_trip(tmp_path, rows):
    p = write_csv(rows, tmp_path / "bench.csv")
    back = read_csv(p)
    assert back == rows
    header = p.read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS
    for col in ("model", "preset", "backend", "precision", "device", "height", "width", "batch", "params", "gmacs",
                "ms_median", "ms_mean", "ms_p90", "ms_p99", "ms_min", "ms_std", "cov", "iters", "img_per_s",
                "e2e_ms_median", "peak_mem_mib", "status", "note"):
        assert col in header


def test_csv_round_trip_keeps_types_and_empty_cells(tmp_path, rows):
    odd = _row("asapnet", 64, 64, 0.1234567890123, batch=3, cuda_graph=True, device="cuda", gpu_name="G",
               macs=12_345_678_901_234, note='says "hi", with a comma', ms_min=float("nan"))
    p = write_csv([*rows, odd], tmp_path / "bench.csv")
    back = read_csv(p)
    assert back[:-1] == rows
    last = back[-1]
    assert last.ms_min is None  # NaN is written as an empty cell and read back as missing
    assert last == BenchRow(**{**odd.as_dict(), "ms_min": None})
    oom = back[5]
    assert oom.status == "oom" and oom.ms_median is None and oom.iters is None and oom.note == "out of memory"
    for r in back:
        for name, kind in (("height", int), ("batch", int), ("params", int), ("macs", int), ("gmacs", float),
                           ("cuda_graph", bool), ("model", str), ("provider", str), ("timestamp", str)):
            assert type(getattr(r, name)) is kind, (name, getattr(r, name))
        assert r.ms_median is None or type(r.ms_median) is float
        assert r.iters is None or type(r.iters) is int
    df = read_frame(p)
    assert list(df.columns) == list(COLUMNS) and len(df) == len(rows) + 1
    assert str(df["height"].dtype) == "Int64" and str(df["iters"].dtype) == "Int64"
    assert str(df["ms_median"].dtype) == "Float64" and str(df["cuda_graph"].dtype) == "boolean"
    assert df["ms_median"].isna().tolist() == [r.status != "ok" for r in rows] + [False]
    assert df["ms_median"].iloc[-1] == 0.1234567890123 and df["macs"].iloc[-1] == 12_345_678_901_234
    assert df["provider"].tolist() == [""] * len(df)  # empty text stays an empty string, not NA
    assert frame([]).columns.tolist() == list(COLUMNS)


def test_read_csv_tolerates_short_and_long_lines(tmp_path, rows):
    text = (write_csv(rows[:2], tmp_path / "bench.csv")).read_text().splitlines()
    header, first, second = text
    short = tmp_path / "short.csv"
    short.write_text("\n".join([header, first, ",".join(second.split(",")[:20])]) + "\n")
    back = read_csv(short)
    assert back[0] == rows[0] and back[1].ms_median == 60.0 and back[1].status == "ok" and back[1].cpu_model == ""
    long = tmp_path / "long.csv"
    long.write_text("\n".join([header, first + ",extra", second]) + "\n")
    assert read_csv(long) == rows[:2]  # the extra cell is dropped, the columns do not shift


def test_markdown_pivot_layout(rows):
    # resolutions are ordered by pixel count, lines by first appearance; a missing cell is empty
    r = [_row("spade", 512, 512, 200.0), _row("asapnet", 256, 256, 3.0), _row("spade", 256, 256, 30.0),
         _row("asapnet", 128, 512, 2.0, backend="onnxruntime")]
    md = markdown(r)
    lat = md.split("## Latency")[1].split("##")[0]
    table = [line for line in lat.splitlines() if line.startswith("|")]
    assert table == [
        "| model | backend | precision | device | 128x512 | 256x256 | 512x512 |",
        "|---|---|---|---|---|---|---|",
        "| spade | torch | fp32 | cpu |  | 30.0 | 200 |",
        "| asapnet | torch | fp32 | cpu |  | 3.00 |  |",
        "| asapnet | onnxruntime | fp32 | cpu | 2.00 |  |  |",
    ]
    sp = md.split("## ASAP-Net speed-up")[1].split("##")[0]
    assert "| asapnet vs spade | torch | fp32 | cpu |  | 10.0x |  |" in sp
    cost = md.split("## Cost")[1].split("##")[0]
    assert "| spade | 1.00M |  | 5 | 5 |" in cost


def test_markdown_same_cell_twice_last_wins_and_empty_report():
    r = [_row("asapnet", 64, 64, 4.0), _row("asapnet", 64, 64, 0, status="oom", note="later"), _row("spade", 64, 64, 8.0)]
    md = markdown(r)
    assert "| asapnet | torch | fp32 | cpu | *oom* |" in md
    assert "| asapnet vs spade | torch | fp32 | cpu |  |" in md
    empty = markdown([])
    assert "| model | backend | precision | device |" in empty and "- every cell ran; no warnings" in empty


def test_noise_mark_uses_the_timing_threshold(monkeypatch):
    from asapbench import report
    from asapbench.bench.timing import COV_WARN

    assert report.COV_WARN is COV_WARN
    r = [_row("asapnet", 64, 64, 4.0, cov=0.03)]
    assert "| asapnet | torch | fp32 | cpu | 4.00 |" in markdown(r)
    monkeypatch.setattr(report, "COV_WARN", 0.02)
    md = markdown(r)
    assert "| asapnet | torch | fp32 | cpu | 4.00† |" in md and "above 2%" in md


def test_markdown_tables_and_speedups(rows):
    md = markdown(rows, [{"cpu_model": "Test CPU", "cpu_count": 2, "torch_version": "2.x", "command": "asapbench run"}])
    assert "Test CPU" in md and "`asapbench run`" in md and "FlopCounterMode" in md
    lat = md.split("## Latency")[1].split("##")[0]
    assert "| asapnet | torch | fp32 | cpu | 10.0 | 20.0 |" in lat
    assert "| spade | torch | fp32 | cpu | 180 | *oom* |" in lat
    assert "| spade | onnxruntime | fp32 | cpu | 100† |  |" in lat  # CoV > 5% is marked
    sp = md.split("## ASAP-Net speed-up")[1].split("##")[0]
    assert "| asapnet vs pix2pixhd | torch | fp32 | cpu | 6.00x | 6.50x |" in sp
    assert "| asapnet vs spade | torch | fp32 | cpu | 18.0x |  |" in sp  # no ratio against an oom cell
    # issue 12: a speed-up whose either cell is noisy (spade onnxruntime, CoV 12%) carries the noise mark
    assert "| asapnet vs spade | onnxruntime | fp32 | cpu | 12.5x† |  |" in sp
    assert "pix2pixhd | onnxruntime" not in sp  # no onnxruntime pix2pixhd row: no comparison
    e2e = md.split("## End-to-end")[1].split("##")[0]
    assert "| asapnet | torch | fp32 | cpu | 11.0 | 21.0 |" in e2e
    notes = md.split("## Notes")[1]
    assert "spade 512x512 torch fp32 cpu: **oom** out of memory" in notes


def test_markdown_divides_by_batch():
    r = [_row("asapnet", 64, 64, 40.0, batch=4), _row("spade", 64, 64, 400.0, batch=4)]
    md = markdown(r)
    assert "| asapnet | torch | fp32 | cpu | 10.0 |" in md
    assert "| asapnet vs spade | torch | fp32 | cpu | 10.0x |" in md


def test_render_all_writes_four_consistent_files(tmp_path, rows):
    env = {"cpu_model": "Test CPU", "git_sha": "abc", "command": "asapbench run"}
    paths = render_all(rows, tmp_path, [env])
    assert sorted(paths) == sorted(["bench.csv", "bench.md", "bench.json", "latency_vs_megapixels.png"])
    obj = json.loads((tmp_path / "bench.json").read_text())
    assert obj["environment"] == env and obj["columns"] == list(COLUMNS)
    assert [BenchRow(**r) for r in obj["rows"]] == rows
    assert read_csv(tmp_path / "bench.csv") == rows
    png = (tmp_path / "latency_vs_megapixels.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_merge_two_csvs_later_file_wins(tmp_path, rows):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    render_all(rows[:4], a, [{"cpu_model": "A"}])
    newer = _row("asapnet", 256, 512, 5.0)
    render_all([newer, _row("asapnet", 1024, 1024, 50.0, device="cuda", gpu_name="Some GPU")], b, [{"cpu_model": "B"}])
    merge_report([a / "bench.csv", b / "bench.csv"], out)
    merged = read_csv(out / "bench.csv")
    assert len(merged) == 6
    obj = json.loads((out / "bench.json").read_text())
    assert [e["cpu_model"] for e in obj["environments"]] == ["A", "B"]
    md = (out / "bench.md").read_text()
    # two machines: the device column names them; the newer asapnet 256x512 cpu row wins
    assert "| asapnet | torch | fp32 | cpu: Test CPU | 5.00 |" in md
    assert "| asapnet | torch | fp32 | cuda: Some GPU |" in md


def test_read_csv_rejects_other_files(tmp_path):
    with pytest.raises(UserError, match="no such CSV"):
        read_csv(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not an asapbench bench.csv"):
        read_csv(other)


def test_report_cli_merges(tmp_path, rows):
    render_all(rows, tmp_path / "run")
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "asapbench", "report", str(tmp_path / "run" / "bench.csv"), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert all((out / f).is_file() for f in ("bench.csv", "bench.md", "bench.json", "latency_vs_megapixels.png"))
    bad = subprocess.run([sys.executable, "-m", "asapbench", "report", str(tmp_path / "nope.csv")],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_plot_draws_presets_of_other_input_channels_as_separate_labelled_lines(monkeypatch):
    """ASAP-Net's Cityscapes presets (36 input channels) and its facades preset (3) are different models: the
    plot must not join them into one line; presets of the same input channels stay one line."""
    from matplotlib.axes import Axes

    from asapbench.report import plot_png

    drawn = []
    plot = Axes.plot

    def record(self, *args, **kw):
        if kw.get("label"):
            drawn.append((kw["label"], list(args[0])))
        return plot(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", record)
    rows = [_row("asapnet", 256, 512, 10.0, preset="cityscapes", input_nc=36),
            _row("asapnet", 512, 1024, 40.0, preset="cityscapes-1024", input_nc=36),
            _row("asapnet", 1024, 1024, 30.0, preset="facades1024", input_nc=3),
            _row("spade", 256, 512, 50.0, input_nc=36), _row("spade", 512, 1024, 200.0, input_nc=36)]
    plot_png(rows)
    labels = {label: xs for label, xs in drawn}
    assert len(drawn) == 3, drawn
    city = [xs for label, xs in labels.items() if label.startswith("asapnet") and "cityscapes, cityscapes-1024: 36 ch" in label]
    facades = [xs for label, xs in labels.items() if label.startswith("asapnet") and "facades1024: 3 ch" in label]
    assert city and len(city[0]) == 2 and facades and len(facades[0]) == 1, labels
    assert any(label.startswith("spade ·") for label in labels)  # one input group: the label as before
