"""Registry, checkpoint loading, MAC counting and the `models` / `info` commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import asapbench
from asapbench import UserError, count_macs, create_generator, list_models, load_generator
from asapbench.checkpoint import save_generator
from asapbench.registry import configure_for_resolution, model_names
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "asapbench", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)




# registry ------------------------------------------------------------------------------------
def test_list_models_names_presets_and_tiny_variants():
    models = {m["name"]: m for m in list_models()}
    assert "asapnet" in models and "cityscapes" in models["asapnet"]["presets"]
    for m in models.values():
        if not m["tiny"]:
            continue
        assert m["default_preset"] in m["presets"]
    # every full generator has a tiny registered stand-in
    fams = {asapbench.registry.get_spec(n).family for n, m in models.items() if m["tiny"]}
    for name, m in models.items():
        if not m["tiny"]:
            assert name in fams, f"{name} has no tiny test variant"


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="asapnet"):
        create_generator("asap")
    with pytest.raises(UserError, match="cityscapes-1024"):
        create_generator("asapnet", "cityscapes-2048")


def test_a_duplicate_model_name_is_refused():
    """A second entry under a taken name raises instead of silently replacing the first."""
    import dataclasses

    from asapbench.modelspec import register_model
    from asapbench.registry import get_spec

    first = get_spec("asapnet-tiny")
    with pytest.raises(ValueError, match="asapnet-tiny.*already registered"):
        register_model(dataclasses.replace(first, description="an impostor"))
    assert get_spec("asapnet-tiny") is first


def _project_imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports at its top, module -> those it imports inside functions)."""
    import ast

    files = [*REPO.glob("asapbench/**/*.py"), *REPO.glob("exporters/*.py"), *REPO.glob("baselines/*.py")]
    names = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f for f in files}

    def imported(node) -> set[str]:
        if isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found = {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        else:
            return set()
        return {n for n in found if n in names}

    top, inner = {}, {}
    for name, f in names.items():
        tree = ast.parse(f.read_text())
        top[name] = {t for node in tree.body for t in imported(node)} - {name}
        inner[name] = {t for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for node in ast.walk(fn) for t in imported(node)} - {name}
    return top, inner


def test_no_import_cycle_is_closed_inside_a_function():
    """Two modules that need each other share a leaf instead: no function-local import goes back to a module
    that imports (directly or not) the importing one, and no two modules import each other inside functions."""
    top, inner = _project_imports()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in top.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    closed = sorted(f"{m} -> {t}" for m, ts in inner.items() for t in ts
                    if m in reach(t) or m in inner.get(t, ()))
    assert not closed, closed


def test_paper_configuration_per_resolution():
    assert configure_for_resolution("asapnet", 256, 512) == ("cityscapes", {})
    assert configure_for_resolution("asapnet", 1024, 1024) == ("facades1024", {})
    assert configure_for_resolution("asapnet", 1024, 2048) == ("cityscapes", {"scale": 64})
    preset, ov = configure_for_resolution("asapnet", 4096, 4096)
    assert ov == {"scale": 256}


# checkpoints ---------------------------------------------------------------------------------
def test_load_generator_roundtrip_and_module_prefix(tmp_path):
    m = create_generator("asapnet-tiny").eval()
    save_generator(m, tmp_path / "g.pth")
    sd = torch.load(tmp_path / "g.pth", weights_only=True)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth")
    x = torch.rand(1, m.input_nc, 32, 64)
    for f in ("g.pth", "ddp.pth"):
        m2 = load_generator("asapnet-tiny", "tiny", tmp_path / f)
        assert not m2.training
        assert torch.equal(m(x), m2(x))


def test_load_generator_names_the_problem(tmp_path):
    m = create_generator("asapnet-tiny")
    save_generator(m, tmp_path / "g.pth")
    with pytest.raises(UserError, match=r"holds a generator of asapnet-tiny:tiny .*not of asapnet:cityscapes; load it as model asapnet-tiny with preset tiny"):
        load_generator("asapnet", "cityscapes", tmp_path / "g.pth")
    sd = torch.load(tmp_path / "g.pth", weights_only=True)
    first = next(iter(sd))
    sd[first] = torch.zeros(3, 3)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"unexpected: extra.weight.*mis-shaped"):
        load_generator("asapnet-tiny", "tiny", tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not found"):
        load_generator("asapnet-tiny", "tiny", tmp_path / "missing.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"\x00not a checkpoint" * 50)
    with pytest.raises(UserError, match="corrupt"):
        load_generator("asapnet-tiny", "tiny", tmp_path / "corrupt.pth")
    truncated = (tmp_path / "g.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_generator("asapnet-tiny", "tiny", tmp_path / "trunc.pth")


def test_load_generator_infers_preset_from_shapes(tmp_path):
    m = create_generator("asapnet-tiny", "tiny-facades")
    save_generator(m, tmp_path / "g.pth")
    assert load_generator("asapnet-tiny", None, tmp_path / "g.pth").preset == "tiny-facades"


# counting ------------------------------------------------------------------------------------
def test_macs_match_a_hand_count_for_asapnet():
    m = create_generator("asapnet", "cityscapes")
    r = count_macs(m, 256, 512)
    hw = 256 * 512
    lr = (36 * 64 * 9 * hw + 64 * 64 * 9 * (hw // 4 + hw // 16 + hw // 64) + 64 * 1024 * 9 * (hw // 256)
          + 7 * 1024 * 1024 * 9 * (hw // 256) + 1024 * 16003 * (hw // 256))
    mlp = hw * (51 * 64 + 3 * 64 * 64 + 64 * 3)
    assert r["streams"] == {"lowres": lr, "pixelwise": mlp}
    assert r["macs"] == lr + mlp
    assert r["params"] == 83201411
    # the LR stream cost does not grow with resolution at S = H/16; the pixelwise stream does
    big = count_macs(create_generator("asapnet", "facades2048"), 2048, 2048)
    assert big["streams"]["lowres"] < 1.1 * count_macs(create_generator("asapnet", "facades512"), 512, 512)["streams"]["lowres"]


def test_spade_macs_match_supplement():
    assert "spade" in model_names()  # registered by baselines/: a failed registration must fail, not skip
    r = count_macs(create_generator("spade", "cityscapes"), 256, 512)
    assert abs(r["macs"] / 281.0e9 - 1) < 0.01, r["macs"]


def test_counting_uses_no_real_forward_and_is_fast():
    assert "spade" in model_names()  # registered by baselines/: a failed registration must fail, not skip
    t = time.perf_counter()
    with torch.device("meta"):
        m = create_generator("spade", "square2048")
    r = count_macs(m, 2048, 2048)
    assert r["macs"] > 1e12 and time.perf_counter() - t < 20


# CLI -----------------------------------------------------------------------------------------
def test_import_and_help_do_not_import_heavy_optional_packages():
    code = (
        "import sys, asapbench, asapbench.cli, asapbench.registry;"
        "from asapbench.cli import app;"
        "heavy=[m for m in sys.modules if m.split('.')[0] in ('onnx','onnxruntime','tensorrt','pycuda','onnxscript','openvino')];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    code2 = (
        "import sys, runpy; sys.argv=['asapbench','--help'];\n"
        "try:\n  runpy.run_module('asapbench', run_name='__main__')\nexcept SystemExit: pass\n"
        "heavy=[m for m in sys.modules if m.split('.')[0] in ('onnx','onnxruntime','tensorrt','pycuda','openvino')]\n"
        "sys.stderr.write(repr(heavy)); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-500:]
    assert "info" in r.stdout and "models" in r.stdout


def test_torch_only_sweep_needs_no_exporters(tmp_path):
    """asapbench/ times the torch backend with exporters/ (and onnx, onnxruntime) made unimportable."""
    code = (
        "import sys\n"
        "for m in ('exporters', 'onnx', 'onnxruntime', 'onnxscript', 'tensorrt'): sys.modules[m] = None\n"
        "from asapbench.commands.run import run_benchmark\n"
        f"rows = run_benchmark(out={str(tmp_path)!r}, models=['asapnet-tiny'], res=['32x64'], backends=['torch'],"
        " warmup=0, iters=1, min_seconds=0.0, e2e_iters=0, progress=False)\n"
        "print([r.status for r in rows])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.strip().endswith("['ok']"), r.stdout


def test_every_command_help_runs():
    from asapbench.cli import app

    r = cli("--help")
    assert r.returncode == 0
    cmds = [c.name for c in app.registered_commands]
    assert {"models", "info"} <= set(cmds)
    for c in cmds:
        rc = cli(c, "--help")
        assert rc.returncode == 0, (c, rc.stderr)


def test_info_json():
    r = cli("info", "--model", "asapnet", "--res", "256x512", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for k in ("model", "preset", "height", "width", "params", "macs"):
        assert k in info
    assert (info["height"], info["width"], info["params"]) == (256, 512, 83201411)
    assert info["geometry"]["S"] == 16 and info["geometry"]["grid"] == [16, 32]
    assert info["streams"]["lowres"] + info["streams"]["pixelwise"] == info["macs"]
    r = cli("info", "--model", "asapnet", "--res", "1024")
    assert r.returncode == 0 and "64 = 4 x 16" in r.stdout


def test_models_table():
    r = cli("models")
    assert r.returncode == 0 and "83,201,411" in r.stdout and "asapnet-tiny" not in r.stdout
    r = cli("models", "--tiny", "--json")
    assert "asapnet-tiny" in {m["name"] for m in json.loads(r.stdout)}


@pytest.mark.parametrize(
    "args,needles",
    [
        (("info", "--model", "nope"), ("unknown model 'nope'", "asapnet")),
        (("info", "--model", "asapnet", "--preset", "x"), ("unknown preset", "facades512")),
        (("info", "--model", "asapnet", "--res", "100x7"), ("cannot take a 100x7 input",)),
        (("info", "--model", "asapnet", "--res", "abc"), ("cannot read resolution",)),
        (("info", "--model", "asapnet", "--bogus"), ("No such option",)),
        (("info",), ("Missing option",)),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needles):
    assert_one_line_error(cli(*args), *needles)


def test_load_generator_applies_the_overrides_recorded_by_train(tmp_path):
    m = create_generator("asapnet-tiny", "tiny", label_nc=9)
    save_generator(m, tmp_path / "latest_net_G.pth")
    (tmp_path / "run.json").write_text(json.dumps({"model": "asapnet-tiny", "preset": "tiny", "overrides": {"label_nc": 9}}))
    for preset in (None, "tiny"):
        m2 = load_generator("asapnet-tiny", preset, tmp_path / "latest_net_G.pth")
        assert m2.label_nc == 9 and m2.preset == "tiny"
