"""Speed-up of asapbench's backends over the official ASAP-Net code, timed side by side in one process.

    python scripts/compare_official.py --official PATH [--presets cityscapes,facades1024] [--rounds 7]
        [--backends torch,onnxruntime] [--threads 2] [--iters 3] [--warmup 1] [--out official-compare]
        [--cache-dir DIR]

PATH is a checkout of the official code (``git clone https://github.com/tamarott/ASAPNet``); nothing of it
is copied into asapbench: its generator is imported from PATH at run time. Per preset (``cityscapes``
256x512, ``facades512``, ``facades1024``, ``facades2048``) the script

1. builds the official ``ASAPNetsGenerator`` from the official options of that preset (the values of its
   ``options/base_options.py`` defaults, the generator's and dataset's ``modify_commandline_options`` and the
   preset's ``test_*.sh``; ``facades2048`` has no script: the facades1024 one with ``--crop_size 2048``),
   CPU (``gpu_ids`` empty), eval mode;
2. builds asapbench's generator with the realistic random weights ``asapbench run`` times
   (:func:`asapbench.weights.realistic_model`) and loads its state dict into the official module
   (``strict=True``: the key names and shapes are the official ones);
3. feeds both the same input (the one-hot label map + instance-edge channel the official forward takes,
   :func:`asapbench.inputs.example_input`) and checks that the outputs agree (max |diff| <= 1e-4, or else
   asapbench's output within the fp32 parity criterion of the project's export gate against a float64 forward
   of the official module: :func:`fp32_agreement`; ASAP-Net's default Winograd low-res convs round
   differently from the official direct convs; otherwise it stops with exit code 1);
4. times the official module (PyTorch eager fp32, ``torch.inference_mode``) against every asapbench
   backend x precision the backend table can run on this CPU (torch fp32; torch bf16 only where the CPU has
   bf16 and the runner's parity gate passes; onnxruntime fp32 on the parity-gated export; any other backend
   the table has, e.g. openvino) in alternated rounds (:func:`asapbench.bench.alternate.alternate`): each
   round runs the official module first, then each asapbench backend, each with ``--warmup`` untimed and
   ``--iters`` timed runs, all with ``--threads`` intra-op threads;
5. writes ``compare.csv``, ``compare.md`` and ``compare.json`` (environment, the official checkout's commit,
   per-round times) to ``--out`` after every preset, and prints the table.

Importing the official generator without its package ``__init__`` files: ``models/__init__.py`` and
``models/networks/__init__.py`` import the losses (VGG19 through torchvision), the discriminators and
``util.util`` (PIL, dill), none of which the generator needs, so the script registers ``models`` and
``models.networks`` as bare packages pointing at PATH and imports ``models.networks.generator`` alone. Two
of that module's imports are stubbed while it loads, and only where they are missing: ``torchvision``
(``models/networks/architecture.py`` imports it for the VGG19 perceptual loss; the generator uses nothing of
it; the stub is taken out of ``sys.modules`` again right after) and ``models.networks.sync_batchnorm`` (a
SPADE submodule that the ASAPNet repository does not contain; ``normalization.py`` imports it for
``norm_G=syncbatch``; ASAP-Net uses ``instanceaffine``). The script says which stubs it used.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import re
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asapbench.errors import UserError  # noqa: E402

PRESETS = ("cityscapes", "facades512", "facades1024", "facades2048")
#: the preset's test script in the official checkout, and the crop size it is run at (facades2048: none exists)
SCRIPTS = {"cityscapes": ("test_cityscapes.sh", None), "facades512": ("test_facades512.sh", None),
           "facades1024": ("test_facades1024.sh", None), "facades2048": ("test_facades1024.sh", 2048)}
#: the options the generator reads: official defaults (options/base_options.py, with
#: ASAPNetsGenerator.modify_commandline_options: norm_G instanceaffine, hr_coor cosine)
BASE_OPTIONS = dict(label_nc=182, contain_dontcare_label=False, output_nc=3, aspect_ratio=1.0, crop_size=512,
                    no_one_hot=False, learned_ds_factor=16, lr_width=64, lr_max_width=1024, lr_depth=7, hr_width=64,
                    hr_depth=5, reflection_pad=False, replicate_pad=False, hr_coor="cosine", norm_G="instanceaffine",
                    no_instance_edge=False, no_instance_dist=True, lr_instance=True, gpu_ids=[])
#: what each dataset mode sets (data/cityscapes_dataset.py, data/facades_dataset.py: modify_commandline_options)
DATASET_OPTIONS = {
    "cityscapes": dict(label_nc=35, aspect_ratio=2.0, crop_size=512, lr_instance=True, no_instance_dist=True,
                       no_instance_edge=False),
    "facades": dict(label_nc=13, aspect_ratio=1.0, crop_size=256, contain_dontcare_label=False, lr_instance=False,
                    no_instance_dist=True, no_instance_edge=True),
}
#: max |official - asapbench| allowed on the same weights and input (asapbench's fp32 export tolerance)
MAX_ABS_DIFF = 1e-4
#: asapbench's default low-res conv form (rows of other forms name theirs)
DEFAULT_FORM = "winograd"
COLUMNS = ("preset", "resolution", "backend", "precision", "lowres_conv", "pixelwise", "status", "official_median_ms", "official_min_ms",
           "official_cov", "asapbench_median_ms", "asapbench_min_ms", "asapbench_cov", "ratio_median", "ratio_min",
           "round_ratio_min", "round_ratio_max", "rounds", "iters", "threads", "max_abs_diff", "note")
_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
        "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


class Disagreement(Exception):
    """The official and asapbench generators do not compute the same thing here (exit code 1, nothing timed)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2 (house rule), not argparse's usage block
        raise UserError(f"{message}; see python scripts/compare_official.py --help")


# --------------------------------------------------------------------------------------------
# the official checkout
# --------------------------------------------------------------------------------------------
def check_official(path: str | Path) -> Path:
    """The official checkout at ``path`` (UserError when it is not one)."""
    p = Path(path).expanduser()
    fix = "pass a checkout of the official code: git clone https://github.com/tamarott/ASAPNet, then --official ASAPNet"
    if not p.exists():
        raise UserError(f"--official {str(p)!r} does not exist; {fix}")
    if not p.is_dir():
        raise UserError(f"--official {str(p)!r} is a file, not a folder; {fix}")
    gen = p / "models" / "networks" / "generator.py"
    try:
        text = gen.read_text(errors="replace")
    except OSError:
        raise UserError(f"--official {str(p)!r} has no models/networks/generator.py; {fix}") from None
    if "class ASAPNetsGenerator" not in text:
        raise UserError(f"--official {str(p)!r}: models/networks/generator.py defines no ASAPNetsGenerator; {fix}")
    return p.resolve()


def official_commit(root: Path) -> str:
    """The checkout's commit, read from its .git (HEAD, its ref or packed-refs); "unknown (...)" without one."""
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: ..."
        m = re.match(r"gitdir:\s*(.+)", git.read_text().strip())
        git = (root / m.group(1)).resolve() if m else git
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return "unknown (no .git)"
    if not head.startswith("ref:"):
        return head
    ref = head.split(":", 1)[1].strip()
    for base in (git, git / "commondir"):
        f = base / ref
        if f.is_file():
            return f.read_text().strip()
    try:
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return f"unknown ({ref} not found)"


class _Missing(types.ModuleType):
    """A stand-in for a module the official generator's import chain names but the generator never uses."""

    def __getattr__(self, name: str):
        raise AttributeError(f"{self.__name__} is a stub made by scripts/compare_official.py ({self.__doc__})")


def import_official_generator(root: Path) -> tuple[type, list[str]]:
    """``models.networks.generator.ASAPNetsGenerator`` of the checkout at ``root``, imported without the
    package ``__init__`` files (module docstring), and the stubs that were needed."""
    import importlib
    import importlib.util

    import torch  # noqa: F401 - loaded before any stub can be seen by torch's own imports

    for pkg, sub in (("models", root / "models"), ("models.networks", root / "models" / "networks")):
        have = sys.modules.get(pkg)
        if have is not None and list(getattr(have, "__path__", [])) != [str(sub)]:
            raise UserError(f"a module {pkg!r} from elsewhere is already imported; run the script in a fresh process")
        if have is None:
            mod = types.ModuleType(pkg, f"bare package of {sub} (its __init__.py is not run)")
            mod.__path__ = [str(sub)]
            sys.modules[pkg] = mod
    stubs: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("torchvision") is None:
        stubs["torchvision"] = _Missing("torchvision", "architecture.py imports it for the VGG19 perceptual loss only")
    if not (root / "models" / "networks" / "sync_batchnorm").exists() and \
            "models.networks.sync_batchnorm" not in sys.modules:
        sb = _Missing("models.networks.sync_batchnorm", "absent from the ASAPNet repository; used only by norm syncbatch")

        class SynchronizedBatchNorm2d:  # noqa: N801 - the official name
            def __init__(self, *a, **k):
                raise RuntimeError("SynchronizedBatchNorm2d is a stub (scripts/compare_official.py)")

        sb.SynchronizedBatchNorm2d = SynchronizedBatchNorm2d
        stubs["models.networks.sync_batchnorm"] = sb
    for name, mod in stubs.items():
        sys.modules[name] = mod
    try:
        gen = importlib.import_module("models.networks.generator")
    finally:
        for name, mod in stubs.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    notes = [f"stubbed {name}: {mod.__doc__}" for name, mod in stubs.items()]
    return gen.ASAPNetsGenerator, notes


def official_options(root: Path, preset: str) -> argparse.Namespace:
    """The options the official generator reads for ``preset``: defaults, then the dataset mode's, then
    the preset's test script (``--dataset_mode``, ``--crop_size``, ``--load_size``, ``--reflection_pad``)."""
    script, crop = SCRIPTS[preset]
    try:
        text = (root / script).read_text()
    except OSError:
        raise UserError(f"--official {str(root)!r} has no {script} (the options of preset {preset}); "
                        "pass a full checkout of https://github.com/tamarott/ASAPNet") from None
    opts = dict(BASE_OPTIONS)
    mode = re.search(r"--dataset_mode\s+(\S+)", text)
    if mode is None or mode.group(1) not in DATASET_OPTIONS:
        raise UserError(f"{script}: no known --dataset_mode ({', '.join(DATASET_OPTIONS)}); is --official a checkout "
                        "of tamarott/ASAPNet?")
    opts.update(DATASET_OPTIONS[mode.group(1)])
    for key in ("crop_size", "label_nc"):
        m = re.search(rf"--{key}\s+(\d+)", text)
        if m:
            opts[key] = int(m.group(1))
    if re.search(r"--reflection_pad\b", text):
        opts["reflection_pad"] = True
    if crop is not None:
        opts["crop_size"] = crop
    return argparse.Namespace(**opts)


def official_size(opt: argparse.Namespace) -> tuple[int, int, int]:
    """(H, W, S) the official code derives from its options: W = crop, H = crop / aspect, S = crop // (16 aspect)."""
    w = int(opt.crop_size)
    return int(w / opt.aspect_ratio), w, int(opt.crop_size // (16 * opt.aspect_ratio))


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One preset ready to time: both models, the input, the agreement, and the asapbench sides."""

    preset: str
    height: int
    width: int
    official: Any
    ours: Any
    x: Any
    max_abs_diff: float  # of the first form
    sides: list  # Side
    skipped: list  # (backend, precision, reason)


@dataclass
class Side:
    """One asapbench configuration timed against the official module: a backend x precision on one low-res conv
    form and pixelwise formulation, with the max |diff| of that configuration's eager output from the official one."""

    backend: str
    precision: str
    runner: Any
    lowres_conv: str
    max_abs_diff: float
    pixelwise: str = "fast"

    @property
    def label(self) -> str:
        """Its name in the rounds (and ``times_ms``): ``backend precision``, plus the form and the pixelwise
        formulation when not the defaults."""
        parts = [self.backend, self.precision]
        parts += [self.lowres_conv] if self.lowres_conv != DEFAULT_FORM else []
        return " ".join(parts + ([self.pixelwise] if self.pixelwise != "fast" else []))


def cpu_backends(names: list[str] | None) -> list[tuple[str, str]]:
    """(backend, precision) pairs to time: the named backends (default: the table's defaults on the CPU)
    with every precision they time on the CPU; unknown names raise UserError."""
    from asapbench.bench import backends as B

    chosen = names if names else B.default_backends("cpu")
    pairs = []
    for name in chosen:
        b = B.get_backend(name)
        for prec in b.precisions.get("cpu", ("fp32",)):
            pairs.append((name, prec))
    return pairs


def float64_forward(module: Any, x: Any) -> Any:
    """``module``'s output on ``x`` computed in float64: a float64 copy of it, run with float64 as torch's default
    dtype, so that tensors it makes while running are float64 too (the official Facades generators build their
    tent-filter downsampler, kernels included, with ``torch.Tensor(...)`` inside ``forward``)."""
    import copy

    import torch

    m = copy.deepcopy(module).double()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.inference_mode():
            return m(x.double())
    finally:
        torch.set_default_dtype(old)


def fp32_agreement(official: Any, x: Any, official_out: Any, ours_out: Any) -> tuple[bool, str]:
    """Whether asapbench's output is as close to the exact result as the official fp32 one, by the project's
    fp32 parity criterion (:func:`exporters.validate.drift_bound`: max |ours - float64| <= 4 x max |official -
    float64| + 1e-4), the float64 result being the official module run in float64 on the same input."""

    from exporters.validate import drift_bound

    exact = float64_forward(official, x)[0]
    official_err = float((official_out.double() - exact).abs().max())
    ours_err = float((ours_out.double() - exact).abs().max())
    bound = drift_bound(official_err)
    return ours_err <= bound, (f"against a float64 forward of the official module: asapbench {ours_err:.3g}, official "
                               f"fp32 {official_err:.3g} (allowed: {bound:.3g})")


def prepare(root: Path, official_cls: type, preset: str, pairs: list[tuple[str, str]], threads: int, cache_dir: Path,
            seed: int, say, forms: tuple[str, ...] = (DEFAULT_FORM,), impls: tuple[str, ...] = ("fast",)) -> Prepared:
    """Build both generators for ``preset``, check that they agree (per low-res conv form in ``forms`` and pixelwise
    formulation in ``impls``), and open every asapbench runner (each backend x precision on each form; formulations
    other than fast on the PyTorch backends only: the graph backends run the same export for all)."""
    import copy

    import torch

    from asapbench.bench import backends as B
    from asapbench.inputs import example_input
    from asapbench.registry import get_preset
    from asapbench.weights import realistic_model

    p = get_preset("asapnet", preset)
    h, w = p.resolution
    opt = official_options(root, preset)
    oh, ow, os_ = official_size(opt)
    say(f"{preset}: building asapbench's generator (realistic random weights)")
    ours = realistic_model("asapnet", h, w, preset, seed)
    ours.set_input_mode("onehot")
    if (oh, ow, os_) != (h, w, ours.scale):
        raise Disagreement(f"{preset}: the official options give {oh}x{ow} with S={os_}, asapbench's preset "
                           f"{h}x{w} with S={ours.scale}")
    say(f"{preset}: building the official generator and loading the same weights (strict)")
    official = official_cls(opt)
    official.load_state_dict(ours.state_dict(), strict=True)
    official.eval()
    x = example_input(ours, 1, h, w, seed=seed)
    with torch.inference_mode():
        a = official(x)[0]
    sides, skipped, diffs = [], [], []
    for form, impl in itertools.product(forms, impls):
        model = ours if (form, impl) == (ours.lowres_conv, ours.pixelwise_impl) else copy.deepcopy(ours)
        model.lowres_conv = form  # inference forms of the same weights
        model.pixelwise_impl = impl
        what = f"{form} low-res convs" + ("" if impl == "fast" else f", {impl} pixelwise")
        say(f"{preset}: checking the outputs agree ({what})")
        with torch.inference_mode():
            b = model(x)
        diff = float((a - b).abs().max())
        diffs.append(diff)
        if not diff <= MAX_ABS_DIFF:
            ok, why = fp32_agreement(official, x, a, b)
            if not ok:
                raise Disagreement(f"{preset}: the official and asapbench ({what}) outputs differ by max "
                                   f"|diff| {diff:.3g} > {MAX_ABS_DIFF:g} on the same weights and input, and {why}; "
                                   "not timed")
            say(f"{preset}: {what}: max |diff| {diff:.3g} > {MAX_ABS_DIFF:g}, but {why}")
        for backend, prec in pairs:
            if impl != "fast" and backend not in ("torch", "torch-compile"):
                continue  # the same export as the fast formulation's: timed once
            reason = B.unsupported_reason(backend, "cpu", prec)
            if reason:
                skipped.append((backend, prec, reason))
                continue
            cell = B.Cell(model=model, x=x, height=h, width=w, batch=1, backend=backend, precision=prec, device="cpu",
                          threads=threads, cache_dir=cache_dir, seed=seed,
                          progress=lambda s, b=backend, q=prec, f=what: say(f"{preset}: {b} {q} {f}: {s}"))
            try:
                runner = B.make_runner(cell)
                runner.prepare()
                runner.open()
            except (B.Unsupported, B.GateFailed) as exc:
                skipped.append((backend, prec, str(exc)))
                continue
            sides.append(Side(backend, prec, runner, form, diff, impl))
    skipped = list(dict.fromkeys(skipped))  # a backend this CPU cannot run is named once, not once per form
    return Prepared(preset, h, w, official, ours, x, diffs[0], sides, skipped)


def time_preset(prep: Prepared, rounds: int, warmup: int, iters: int, on_run=None) -> dict[str, list[list[float]]]:
    """Alternated rounds: the official module first, then each asapbench runner."""
    import torch

    from asapbench.bench.alternate import alternate

    official, x = prep.official, prep.x

    def run_official():
        with torch.inference_mode():
            official(x)

    sides = [("official", run_official)] + [(side.label, side.runner.run) for side in prep.sides]
    return alternate(sides, rounds, warmup=warmup, iters=iters, on_run=on_run)


def rows_for(prep: Prepared, times: dict[str, list[list[float]]], threads: int, iters: int) -> list[dict[str, Any]]:
    from asapbench.bench.alternate import compare

    res = f"{prep.height}x{prep.width}"
    rows = []
    for side in prep.sides:
        c = compare(times["official"], times[side.label])
        rows.append({
            "preset": prep.preset, "resolution": res, "backend": side.backend, "precision": side.precision,
            "lowres_conv": side.lowres_conv, "pixelwise": side.pixelwise, "status": "ok",
            "official_median_ms": c.baseline.median, "official_min_ms": c.baseline.min, "official_cov": c.baseline.cov,
            "asapbench_median_ms": c.other.median, "asapbench_min_ms": c.other.min, "asapbench_cov": c.other.cov,
            "ratio_median": c.ratio_median, "ratio_min": c.ratio_min, "round_ratio_min": c.round_ratio_min,
            "round_ratio_max": c.round_ratio_max, "rounds": c.rounds, "iters": iters, "threads": threads,
            "max_abs_diff": side.max_abs_diff,
            "note": side.runner.note,
            "round_ratios": list(c.round_ratios),
        })
    for b, q, reason in prep.skipped:
        rows.append({"preset": prep.preset, "resolution": res, "backend": b, "precision": q, "status": "skipped",
                     "threads": threads, "max_abs_diff": prep.max_abs_diff, "note": reason})
    return rows


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _f(v: Any, kind: str = "") -> str:
    if v is None or v == "":
        return ""
    if kind == "ms":
        return f"{v:.1f}"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "%":
        return f"{v:.1%}"
    if kind == "e":
        return f"{v:.2g}"
    return str(v)


def _side_name(r: dict[str, Any]) -> str:
    """``backend precision`` of a row, with its low-res conv form (and a pixelwise formulation other than the fast
    one) in parentheses when it has one."""
    form = r.get("lowres_conv")
    if form and r.get("pixelwise", "fast") not in ("fast", ""):
        form = f"{form}, {r['pixelwise']} pixelwise"
    return f"{r['backend']} {r['precision']}" + (f" ({form})" if form else "")


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The headers and cells of the printed / markdown table (timed rows only; :func:`row_notes` has the rest)."""
    head = ["preset", "res", "asapbench", "official median ms", "official min ms", "official CoV",
            "asapbench median ms", "asapbench min ms", "asapbench CoV", "speed-up (medians)", "speed-up (minima)",
            "per-round speed-ups", "rounds x iters", "max abs diff"]
    out = []
    for r in rows:
        if r["status"] != "ok":
            continue
        out.append([r["preset"], r["resolution"], _side_name(r), _f(r["official_median_ms"], "ms"),
                    _f(r["official_min_ms"], "ms"), _f(r["official_cov"], "%"), _f(r["asapbench_median_ms"], "ms"),
                    _f(r["asapbench_min_ms"], "ms"), _f(r["asapbench_cov"], "%"), _f(r["ratio_median"], "x"),
                    _f(r["ratio_min"], "x"), f"{r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f}x",
                    f"{r['rounds']} x {r['iters']}", _f(r["max_abs_diff"], "e")])
    return head, out


def row_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per row with a note: what a timed row ran (e.g. the bf16 gate), why a row was skipped."""
    out = []
    for r in rows:
        if r.get("note"):
            what = "skipped" if r["status"] != "ok" else "note"
            out.append(f"{r['preset']} {_side_name(r)}: {what}: {r['note']}")
    return out


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], settings: dict[str, Any]) -> str:
    head, cells = table_rows(rows)
    lines = [
        "# asapbench vs the official ASAP-Net code",
        "",
        f"`{env.get('command')}` on {env.get('cpu_model')} ({env.get('cpu_count')} cpus; ISA: "
        f"{' '.join(env.get('cpu_isa') or []) or 'unknown'}), {settings['threads']} thread(s) on both sides; "
        f"torch {env.get('torch_version')}, onnxruntime {env.get('onnxruntime_version')}; asapbench git "
        f"{str(env.get('git_sha'))[:10]}, official tamarott/ASAPNet {str(env.get('official_commit'))[:10]}; "
        f"{env.get('timestamp')}.",
        "",
        f"Alternated rounds in one process: each round times the official generator (PyTorch eager fp32) first, then "
        f"each asapbench backend, {settings['warmup']} warm-up + {settings['iters']} timed run(s) each. Both run the "
        "same weights (asapbench's realistic random weights, loaded strictly into the official module) on the same "
        "one-hot input; max abs diff is the largest |difference| of their outputs. Speed-up = official / asapbench: of "
        "the medians and of the minima over all timed runs, and the range of the per-round ratios of round medians."
        + (" " + "; ".join(settings["stubs"]) + "." if settings.get("stubs") else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    notes = row_notes(rows)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict[str, Any]], env: dict[str, Any], settings: dict[str, Any],
                  times: dict[str, Any], complete: bool) -> None:
    from asapbench.fsutil import atomic_write_json, atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in COLUMNS])
    atomic_write_text(out / "compare.csv", buf.getvalue())
    atomic_write_text(out / "compare.md", markdown(rows, env, settings))
    atomic_write_json(out / "compare.json", {"complete": complete, "environment": env, "settings": settings,
                                              "rows": rows, "times_ms": times})


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    head, cells = table_rows(rows)
    keep = [0, 1, 2, 3, 5, 6, 8, 9, 10, 11, 13]  # the printed table leaves the minima in ms to the files
    t = Table(title="asapbench vs the official ASAP-Net (speed-up = official / asapbench)")
    for i in keep:
        t.add_column(head[i].replace("asapbench ", "").replace("official ", "off. "), overflow="fold")
    for c in cells:
        t.add_row(*(c[i] for i in keep))
    console = Console(width=max(Console().width, 150))
    console.print(t)
    for n in row_notes(rows):
        console.print(n, soft_wrap=True)


def public_argv(argv: list[str]) -> list[str]:
    """``argv`` with the --official checkout named by its folder name only (results may be published)."""
    out, it = [], iter(argv)
    for a in it:
        if a == "--official":
            out += [a, Path(next(it, "")).name or "."]
        elif a.startswith("--official="):
            out.append("--official=" + (Path(a.split("=", 1)[1]).name or "."))
        else:
            out.append(a)
    return out


def cpu_isa() -> list[str]:
    """The SIMD / matrix ISA flags of this CPU that decide GEMM and conv speed (from /proc/cpuinfo)."""
    from asapbench.cpuinfo import cpu_flags

    have = cpu_flags() or set()
    return [f for f in _ISA if f in have]


# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog="compare_official.py", description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--official", required=True, help="a checkout of https://github.com/tamarott/ASAPNet")
    ap.add_argument("--presets", default="cityscapes,facades1024", help=f"comma-separated, from {', '.join(PRESETS)}")
    ap.add_argument("--rounds", type=int, default=7, help="alternated rounds (official first in each)")
    ap.add_argument("--iters", type=int, default=3, help="timed runs per side per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per side per round, before its timed runs")
    ap.add_argument("--backends", default="", help="comma-separated asapbench backends (default: the backend "
                    "table's defaults on the CPU); every precision each times on the CPU is compared")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for both sides")
    ap.add_argument("--out", default="official-compare", help="folder for compare.csv, compare.md, compare.json")
    ap.add_argument("--cache-dir", default=None, help="ONNX export cache (default $ASAPBENCH_CACHE or ~/.cache/asapbench)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and the input")
    ap.add_argument("--lowres-conv", default="winograd", help="comma-separated forms of asapbench's low-res 3x3 "
                    "convs to time, each against the official module (winograd, winograd4, direct)")
    ap.add_argument("--pixelwise", default="fast", help="comma-separated formulations of ASAP-Net's pixelwise stream "
                    "for the torch backends (fast, fused, reference); the graph backends run one export for all")
    a = ap.parse_args(argv)
    a.presets = [p.strip() for p in a.presets.split(",") if p.strip()]
    bad = [p for p in a.presets if p not in PRESETS]
    if bad or not a.presets:
        raise UserError(f"unknown preset {', '.join(bad) or '(none)'!s}; --presets takes {', '.join(PRESETS)}")
    for opt in ("rounds", "iters", "threads"):
        if getattr(a, opt) < 1:
            raise UserError(f"--{opt} must be >= 1, got {getattr(a, opt)}")
    if a.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {a.warmup}")
    a.backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    from asapbench.registry import lowres_conv_choice

    a.lowres_conv = [lowres_conv_choice(f.strip()) for f in a.lowres_conv.split(",") if f.strip()]
    if not a.lowres_conv:
        raise UserError("--lowres-conv needs at least one form: winograd, winograd4 or direct")
    from asapbench.registry import pixelwise_choice

    a.pixelwise = list(dict.fromkeys(pixelwise_choice(f.strip()) for f in a.pixelwise.split(",") if f.strip()))
    if not a.pixelwise:
        raise UserError("--pixelwise needs at least one formulation: fast, fused or reference")
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UserError as exc:
        print(f"asapbench: error: {str(exc).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    except Disagreement as exc:
        print(f"asapbench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("asapbench: interrupted; compare.* hold the presets finished so far", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    a = parse_args(argv)
    root = check_official(a.official)
    pairs = cpu_backends(a.backends)  # unknown backend names: UserError before any work
    from asapbench.bench import backends as B

    reasons = {f"{b} {q}": B.unsupported_reason(b, "cpu", q) for b, q in pairs}
    if all(reasons.values()):
        raise UserError("no asapbench backend given can run on this CPU (" + "; ".join(f"{k}: {v}" for k, v in reasons.items())
                        + "); pass --backends torch,onnxruntime (or leave --backends out)")
    for preset in a.presets:
        official_options(root, preset)  # a missing test script: UserError before any work
    from asapbench.fsutil import default_cache_dir, ensure_writable_dir

    out = ensure_writable_dir(a.out, "--out folder")
    cache_dir = Path(a.cache_dir) if a.cache_dir else default_cache_dir()

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from asapbench.bench.system import snapshot

    console = Console(stderr=True)
    torch.set_num_threads(a.threads)
    official_cls, stubs = import_official_generator(root)
    for s in stubs:
        console.print(f"[dim]{s}[/dim]")
    env = snapshot(public_argv(sys.argv[1:] if argv is None else argv))
    env["command"] = env["command"].replace("asapbench ", "python scripts/compare_official.py ", 1)
    env.update(cpu_isa=cpu_isa(), official_path_name=root.name, official_commit=official_commit(root),
               torch_threads=a.threads)
    settings = dict(presets=a.presets, rounds=a.rounds, iters=a.iters, warmup=a.warmup, threads=a.threads,
                    backends=[f"{b} {q}" for b, q in pairs], lowres_conv=a.lowres_conv, pixelwise=a.pixelwise, seed=a.seed, max_abs_diff_allowed=MAX_ABS_DIFF,
                    stubs=stubs)
    rows: list[dict[str, Any]] = []
    times: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                  transient=False) as progress:
        for preset in a.presets:
            task = progress.add_task(f"{preset}: preparing", total=None)
            t0 = time.perf_counter()
            prep = prepare(root, official_cls, preset, pairs, a.threads, cache_dir, a.seed,
                           lambda s, task=task: progress.update(task, description=s), tuple(a.lowres_conv),
                           tuple(a.pixelwise))
            try:
                n_sides = 1 + len(prep.sides)
                progress.update(task, total=a.rounds * n_sides * (a.warmup + a.iters), completed=0,
                                description=f"{preset}: round 1/{a.rounds}")

                def on_run(r, name, phase, i, task=task, preset=preset):
                    progress.update(task, advance=1, description=f"{preset}: round {r}/{a.rounds}: {name} {phase} {i}")

                t = time_preset(prep, a.rounds, a.warmup, a.iters, on_run)
            finally:
                for side in prep.sides:
                    side.runner.close()
            progress.update(task, description=f"{preset}: done in {time.perf_counter() - t0:.0f} s")
            times[preset] = t
            rows += rows_for(prep, t, a.threads, a.iters)
            del prep
            write_outputs(out, rows, env, settings, times, complete=preset == a.presets[-1])
    print_table(rows)
    Console(stderr=True).print(f"wrote {out / 'compare.csv'}, compare.md, compare.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
