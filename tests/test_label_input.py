"""`--input labels`: the integer label map in, the official input encoded inside the graph.

Every family computes what its one-hot model computes (torch, realistic label maps and weights); ASAP-Net's
first pixelwise layer really is the row lookup in graphs (the one-hot product in eager inference); state dicts are unchanged; the ONNX export takes int32 and
matches torch in onnxruntime (and builds with TensorRT-RTX where installed); the cache keys, files, sidecars
and benchmark rows say which input they are for; bad label maps are one-line errors at the CLI.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import asapbench
from asapbench.errors import UserError
from asapbench.inputs import example_input, label_input, random_label_map
from asapbench.labels import LABEL_DTYPE, encode_labels, instance_edges
from asapbench.models.base import edge_map
from asapbench.weights import realistic_model
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]


def _pair(model, batch: int, h: int, w: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot input, label-map input) of the same realistic label and instance maps."""
    model.set_input_mode("onehot")
    x1 = example_input(model, batch, h, w, seed=seed)
    model.set_input_mode("labels")
    xl = example_input(model, batch, h, w, seed=seed)
    return x1, xl


def _both(model, x1: torch.Tensor, xl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.set_input_mode("onehot")
    a = model(x1)
    model.set_input_mode("labels")
    b = model(xl)
    return a, b


# ---------------------------------------------------------------------------------------------
# the encoding
# ---------------------------------------------------------------------------------------------
def test_in_graph_encoding_equals_the_host_encoding():
    labels, inst = random_label_map(2, 48, 80, 35, seed=3)
    assert torch.equal(edge_map(inst.to(LABEL_DTYPE), torch.float32), instance_edges(inst))
    g = asapbench.create_generator("asapnet-tiny", "tiny", label_nc=35)
    x = label_input(g, labels, inst)
    assert x.dtype == torch.int32 and x.shape == (2, 2, 48, 80)
    assert torch.equal(g.encode_label_input(x), encode_labels(labels, 35, inst))
    dc = asapbench.create_generator("asapnet-tiny", "tiny-facades", contain_dontcare=True)
    lab = torch.randint(0, dc.label_classes, (1, 1, 64, 64))
    assert int(lab.max()) == dc.label_nc  # the don't-care id occurs
    assert torch.equal(dc.encode_label_input(label_input(dc, lab)), encode_labels(lab, dc.label_nc, contain_dontcare=True))


# ---------------------------------------------------------------------------------------------
# same outputs as the one-hot path, every family
# ---------------------------------------------------------------------------------------------
ASAPNET_CASES = [
    # (name, preset, H, W, overrides): edges to the low-res stream only / no edges / edges in both streams / dontcare
    ("asapnet-tiny", "tiny", 32, 64, {}),
    ("asapnet-tiny", "tiny-facades", 64, 64, {}),
    ("asapnet-tiny", "tiny", 32, 64, {"lr_instance": False}),
    ("asapnet-tiny", "tiny", 32, 64, {"contain_dontcare": True}),
    ("asapnet", "cityscapes", 64, 128, {}),
    ("asapnet", "facades1024", 128, 128, {}),
]


@pytest.mark.parametrize("name,preset,h,w,overrides", ASAPNET_CASES,
                         ids=[f"{c[0]}:{c[1]}{':' + ','.join(c[4]) if c[4] else ''}" for c in ASAPNET_CASES])
def test_asapnet_labels_equal_onehot_with_the_row_lookup(name, preset, h, w, overrides, one_thread, monkeypatch):
    g = realistic_model(name, h, w, preset, seed=1, **overrides)
    x1, xl = _pair(g, 2, h, w)
    assert xl.dtype == torch.int32 and xl.shape[1] == (2 if g.instance_edge else 1)
    calls = []
    real = type(g)._first_layer_lookup
    monkeypatch.setattr(type(g), "_first_layer_lookup", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with torch.inference_mode():  # eager: chunked, the one-hot product on the in-graph one-hot (faster there)
        a, b = _both(g, x1, xl)
    assert not calls, "eager label-map inference should take the chunked one-hot product"
    assert a.std() > 0.1  # a spread output, not a saturated tanh (any two of those would agree)
    assert (a - b).abs().max() <= 1e-5
    with torch.enable_grad():  # the graph formulation (what ONNX / torch.export see): the row lookup
        a, b = _both(g, x1, xl)
    assert calls, "the label-map graph did not use the row lookup"
    assert (a - b).abs().max() <= 1e-5
    g.pixelwise_impl = "reference"  # the literal formulation runs on the in-graph one-hot
    with torch.inference_mode():
        a2, b2 = _both(g, x1, xl)
    assert (a2 - b2).abs().max() <= 1e-5
    # the comparison can fail: other labels give another image
    lab2 = xl.clone()
    lab2[:, 0] = (lab2[:, 0] + 1) % g.label_classes
    with torch.inference_mode():
        assert (g(lab2) - b.detach()).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["pix2pixhd-tiny", "pix2pixhd-local-tiny", "spade-tiny", "pix2pix-tiny"])
def test_baselines_labels_equal_onehot(name, one_thread):
    from asapbench.registry import get_spec

    spec = get_spec(name)
    h, w = spec.presets[spec.default_preset].resolution
    g = realistic_model(name, h, w, None, seed=2)
    x1, xl = _pair(g, 2, h, w)
    with torch.inference_mode():
        a, b = _both(g, x1, xl)
    assert a.std() > 0.1
    assert (a - b).abs().max() <= 1e-5


def test_state_dict_unchanged_and_checkpoints_load_in_either_mode():
    torch.manual_seed(0)
    g = asapbench.create_generator("asapnet-tiny", "tiny")
    keys = list(g.state_dict())
    sd = {k: v.clone() for k, v in g.state_dict().items()}
    g.set_input_mode("labels")
    assert list(g.state_dict()) == keys
    other = asapbench.create_generator("asapnet-tiny", "tiny").set_input_mode("labels")
    other.load_state_dict(sd)  # strict: the same keys and shapes
    assert all(torch.equal(other.state_dict()[k], v) for k, v in sd.items())


def test_wrong_input_for_the_mode_is_a_user_error():
    g = asapbench.create_generator("asapnet-tiny", "tiny").eval().set_input_mode("labels")
    labels, inst = random_label_map(1, 32, 64, 6, seed=0)
    x1 = encode_labels(labels, 6, inst)
    with pytest.raises(UserError, match=r"expects an integer map \[N, 2, H, W\]"):
        g(x1)  # the one-hot tensor
    with pytest.raises(UserError, match="multiple of 8"):
        g(torch.zeros(1, 2, 30, 64, dtype=torch.int32))
    with pytest.raises(UserError, match="choose one of: onehot, labels"):
        g.set_input_mode("ids")


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def test_labels_export_matches_torch_in_onnxruntime_and_has_its_own_key(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from exporters.onnx_export import export_key, export_onnx, onnx_stem, weights_sha256
    from exporters.ort import OrtRunner

    g = realistic_model("asapnet-tiny", 32, 64, "tiny", seed=4)
    wsha = weights_sha256(g)
    key1 = export_key(g, 32, 64, "fp32", False, 1, 20, 0, wsha)
    stem1 = onnx_stem(g, 32, 64, "fp32")
    g.set_input_mode("labels")
    key2 = export_key(g, 32, 64, "fp32", False, 1, 20, 0, wsha)
    assert key1 != key2 and key2["graph_variant"].endswith("input=labels")
    # one-hot keys carry no input mode (as before the mode existed); the Winograd low-res form has its own part
    assert key1["graph_variant"] == "pixelwise=fast,groups=65536,lowres=winograd"
    assert onnx_stem(g, 32, 64, "fp32") == stem1 + "-labels"

    r = export_onnx(g, 32, 64, tmp_path, "fp32", seed=0)
    assert r.onnx_path.name == "asapnet-tiny-tiny-32x64-fp32-labels.onnx"
    side = r.sidecar
    assert side["parity"]["passed"] and side["input_kind"] == "labels"
    assert side["input"]["dtype"] == "int32" and side["input"]["shape"] == [1, 2, 32, 64]
    ops = {n.op_type for n in onnx.load(str(r.onnx_path)).graph.node}
    assert {"Gather", "Equal"} <= ops  # the row lookup and the in-graph one-hot
    xl = example_input(g, 1, 32, 64, seed=11)
    with torch.inference_mode():
        ref = g(xl).numpy()
        g.set_input_mode("onehot")
        ref1 = g(example_input(g, 1, 32, 64, seed=11)).numpy()
    got = OrtRunner(r.onnx_path).infer(xl.numpy())
    assert np.abs(got - ref).max() <= 1e-4 and np.abs(got - ref1).max() <= 1e-4
    # the one-hot export goes to another file; the labels file is reused as it is
    g.set_input_mode("onehot")
    r1 = export_onnx(g, 32, 64, tmp_path, "fp32", seed=0, check=False)
    assert r1.onnx_path.name == "asapnet-tiny-tiny-32x64-fp32.onnx" and r1.sidecar["input_kind"] == "onehot"
    g.set_input_mode("labels")
    assert export_onnx(g, 32, 64, tmp_path, "fp32", seed=0).reused


def test_labels_export_builds_with_tensorrt_rtx(tmp_path, one_thread):
    from exporters import trt_flavours as F

    rtx, _, why = F.probe("rtx")
    if rtx is None:
        pytest.skip(why)
    from exporters.onnx_export import export_onnx
    from exporters.trt import build_engine

    torch.manual_seed(0)
    g = asapbench.create_generator("spade-tiny").set_input_mode("labels")
    g.prepare_for_inference()
    onnx_path = export_onnx(g, 64, 64, tmp_path, "fp32", check=False).onnx_path
    e = build_engine(onnx_path, tmp_path, flavour="rtx", targets=[86])
    assert e.engine_path.is_file() and e.engine_path.stat().st_size > 0


def _cli(*args, timeout=300):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "asapbench", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=env)


def test_cli_label_ids_beyond_the_classes_and_bad_input_kind_exit_2(tmp_path):
    from PIL import Image

    maps = tmp_path / "maps"
    maps.mkdir()
    arr = np.zeros((32, 64), np.uint8)
    arr[:, 32:] = 40  # asapnet-tiny takes 6 classes
    Image.fromarray(arr).save(maps / "scene.png")
    out = str(tmp_path / "out")
    r = _cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--input", "labels", "--parity-labels", str(maps),
             "--out", out)
    assert_one_line_error(r, "ids up to 40", "6 classes")
    assert not list(Path(out).glob("*.onnx")) if Path(out).exists() else True
    assert_one_line_error(_cli("export", "--model", "asapnet-tiny", "--res", "32x64", "--input", "ids", "--out", out),
                          "--input")
    assert_one_line_error(_cli("run", "--models", "asapnet-tiny", "--res", "32x64", "--input", "ids", "--out", out),
                          "--input")


# ---------------------------------------------------------------------------------------------
# benchmark rows
# ---------------------------------------------------------------------------------------------
def test_run_with_labels_input_writes_rows_that_say_labels(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    r = _cli("run", "--models", "asapnet-tiny", "--res", "32x64", "--backends", "torch,onnxruntime", "--input", "labels",
             "--iters", "2", "--min-seconds", "0", "--warmup", "1", "--e2e-iters", "1", "--threads", "1",
             "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows), rows
    assert {row["input"] for row in rows} == {"labels"}
    # int32 label + instance ids: 2 x 4 bytes per pixel instead of 7 x 4 (6 labels + edge)
    assert {int(row["input_bytes"]) for row in rows} == {2 * 4 * 32 * 64}
    assert all(json.loads((out / "bench.json").read_text())["rows"][i]["input"] == "labels" for i in range(2))
    md = (out / "bench.md").read_text()
    assert "torch +labels" in md and "onnxruntime +labels" in md
    assert list((tmp_path / "cache" / "onnx").glob("*-labels.onnx"))


def test_onehot_and_labels_rows_are_separate_cells():
    from asapbench.record import BenchRow
    from asapbench.report import markdown

    rows = [BenchRow(model="asapnet", backend="torch", height=256, width=512, input=k, ms_median=m, ms_mean=m,
                     input_bytes=b, input_nc=36)
            for k, m, b in (("onehot", 10.0, 36 * 4 * 256 * 512), ("labels", 9.0, 2 * 4 * 256 * 512))]
    md = markdown(rows)
    assert "| torch " in md and "| torch +labels " in md  # two lines of the table, not one cell measured twice
    assert "18.00 MiB (onehot)" in md and "1.00 MiB (labels)" in md
