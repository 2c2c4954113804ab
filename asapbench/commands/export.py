"""`asapbench export`: ONNX (fp32 / fp16) and TensorRT engines, parity-gated (a thin shell over
:func:`export_models`, which tests call directly)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from asapbench.errors import UserError

ENGINES = ("onnx", "trt", "all")
PRECISIONS = ("fp32", "fp16")
DEFAULT_OUT = "out/exports"


class Engine(str, Enum):
    onnx = "onnx"
    trt = "trt"
    all = "all"


class TrtFlavour(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    rtx = "rtx"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class InputKind(str, Enum):
    onehot = "onehot"
    labels = "labels"


#: help text of --input (export, run and profile)
INPUT_HELP = ("onehot: the official float one-hot (+ instance edge) tensor; labels: the int32 label map "
              "[N, 1, H, W] (+ instance ids as channel 2 where the model uses edges), encoded inside the graph. "
              "Same outputs; see docs/export.md.")


#: help text of --lowres-conv (export, run and profile; checked by :func:`asapbench.registry.lowres_conv_choice`)
LOWRES_HELP = ("ASAP-Net's low-res 3x3 convs: winograd (Winograd F(2x2,3x3), the default), winograd4 (F(4x4,3x3): "
               "fewer multiplications, about 1.5x the direct conv's rounding error) or direct (plain conv). "
               "See docs/generators.md.")
#: help text of --pixelwise (run and profile; checked by :func:`asapbench.registry.pixelwise_choice`)
PIXELWISE_HELP = ("ASAP-Net's pixelwise stream in PyTorch on the CPU: fast (batched products, the default), fused (one "
                  "kernel compiled on first use with the machine's C++ compiler: bias and activation in registers, "
                  "blocks of pixels in cache) or reference (the literal formulation). Graph backends (onnxruntime, "
                  "openvino, tensorrt) run the same export for all three. See docs/generators.md.")


def input_kind(value: Any) -> str:
    """The --input value as a string, checked (UserError names the choices)."""
    from asapbench.models.base import INPUT_MODES

    v = value.value if isinstance(value, Enum) else str(value)
    if v not in INPUT_MODES:
        raise UserError(f"unknown --input {v!r}; choose one of: {', '.join(INPUT_MODES)}")
    return v


def _build_models(
    model: str,
    preset: str | None,
    checkpoint: str | None,
    resolutions: Sequence[tuple[int, int]],
    seed: int,
    dynamic: bool,
) -> list[tuple[Any, list[tuple[int, int]]]]:
    """[(generator, [resolutions it is exported at])]: one model per configuration, every size checked.

    Without --preset every resolution gets the paper's configuration for it
    (:func:`asapbench.registry.build_for_resolution`); with --dynamic one graph serves every size, so the
    model is configured for the first; a --checkpoint fixes one model for all. Random weights come from
    :func:`asapbench.weights.realistic_model`, the builder `run` and `profile` use (seeded, made realistic:
    a saturated tanh would make the parity gate meaningless), so `run` reuses these exports.
    """
    from asapbench.registry import build_for_resolution, configure_for_resolution, get_spec
    from asapbench.weights import realistic_model

    get_spec(model)
    if checkpoint is not None:
        from asapbench.checkpoint import load_generator

        g = load_generator(model, preset, checkpoint)
        g.prepare_for_inference()
        for h, w in resolutions:
            g.check_input_size(h, w)
        return [(g, list(resolutions))]
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for h, w in resolutions:
        p, overrides = (preset, {}) if preset is not None else configure_for_resolution(model, *(resolutions[0] if dynamic else (h, w)))
        groups.setdefault((p, repr(sorted(overrides.items()))), []).append((h, w))
    for res in groups.values():  # every size is checked (on the meta device) before any weights are made
        g = build_for_resolution(model, *(resolutions[0] if dynamic else res[0]), preset, device="meta")
        for h, w in res:
            g.check_input_size(h, w)
    return [(realistic_model(model, *(resolutions[0] if dynamic else res[0]), preset, seed), res) for res in groups.values()]


@functools.lru_cache(maxsize=8)
def _trt_status(flavour: str = "auto") -> tuple[bool, str]:
    """(engines can be *built* here with this --trt choice, reason)."""
    from exporters.trt import build_status

    return build_status(flavour)


def _trt_plan(flavour: str, target_sm: Any) -> tuple[Any, list[int]]:
    """(Flavour, checked target list) for --trt / --target-sm, before any work (UserError otherwise)."""
    from exporters import trt_flavours as F

    targets = F.parse_targets(target_sm) if target_sm is not None else None
    f = F.resolve_flavour(flavour)
    ok, reason = _trt_status(f.name)
    if not ok:
        raise UserError(reason)
    return f, F.resolve_targets(f, targets, F.load(f))


def export_models(
    model: str,
    res: Sequence[str],
    engine: str = "onnx",
    precision: str = "fp32",
    preset: str | None = None,
    checkpoint: str | None = None,
    dynamic: bool = False,
    out: str | Path = DEFAULT_OUT,
    check: bool = True,
    seed: int = 0,
    workspace_gb: float = 12.0,
    batch: int = 1,
    opset: int | None = None,
    reuse: bool = True,
    log: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
    parity_labels: str | Path | None = None,
    trt: str = "auto",
    target_sm: str | Sequence[int] | None = None,
    input: str = "onehot",
    lowres_conv: str | None = None,
) -> list[dict[str, Any]]:
    """Export ``model`` at every resolution in ``res``; returns one record per ONNX file / engine.

    ``engine``: ``onnx`` (ONNX only), ``trt`` (ONNX + TensorRT engines; UserError when no TensorRT flavour
    can build here) or ``all`` (ONNX, and engines where a TensorRT flavour can build: otherwise says why
    they were skipped). ``input``: ``onehot`` (default) or ``labels`` (the graph takes the int32 label map). ``trt``: ``auto``, ``tensorrt`` (enterprise; builds on this GPU) or ``rtx``
    (TensorRT for RTX; builds without a GPU for ``target_sm``, default 86,89,120).
    """
    from asapbench.bounds import check, check_all
    from asapbench.fsutil import ensure_writable_dir
    from asapbench.resolution import format_resolution, parse_resolutions

    engine = engine.value if isinstance(engine, Enum) else str(engine)
    precision = precision.value if isinstance(precision, Enum) else str(precision)
    if engine not in ENGINES:
        raise UserError(f"unknown --engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    check_all(batch=batch, workspace_gb=workspace_gb, seed=seed)
    if opset is not None:
        from asapbench.errors import require

        onnx = require("onnx", why="to export ONNX")
        check("--opset", opset, hi=onnx.defs.onnx_opset_version())  # no newer than the installed onnx defines
    kind = input_kind(input)
    from asapbench.registry import lowres_conv_choice

    form = lowres_conv_choice(lowres_conv, [model])
    resolutions = parse_resolutions(res)
    want_trt = engine in ("trt", "all")
    trt = trt.value if isinstance(trt, Enum) else str(trt)
    trt_ok, trt_reason, flavour, trt_targets = False, "", None, None
    if engine == "onnx" and target_sm is not None:
        raise UserError("--target-sm applies to TensorRT engines; add --engine trt")
    if want_trt:
        try:
            flavour, trt_targets = _trt_plan(trt, target_sm)
            trt_ok = True
        except UserError as exc:
            if engine == "trt" or target_sm is not None or trt != "auto":
                raise UserError(str(exc) if str(exc).startswith("--") else f"--engine {engine}: {exc}") from None
            trt_reason = str(exc)
    if checkpoint is not None:  # a file, or a run folder with a latest_net_G.pth (UserError otherwise)
        from asapbench.checkpoint import resolve_checkpoint_path

        checkpoint = str(resolve_checkpoint_path(checkpoint))
    if parity_labels is not None:
        from asapbench.inputs import check_label_map_files

        check_label_map_files(parity_labels)  # UserError when the folder has no (readable) label maps
    out_dir = ensure_writable_dir(out, "--out folder")
    from exporters.onnx_export import export_onnx

    models = _build_models(model, preset, checkpoint, resolutions, seed, dynamic)
    _check_memory(models, batch)
    records: list[dict[str, Any]] = []
    for g, rs in models:
        g.set_input_mode(kind)  # after the weights were made realistic (on the one-hot input)
        if form is not None:
            g.lowres_conv = form  # an inference form: the weights stay; the export key names it
        for h, w in (rs[:1] if dynamic else rs):
            r = export_onnx(g, h, w, out_dir, precision=precision, dynamic=dynamic, batch=batch, opset=opset,
                            check=check, checkpoint=checkpoint, seed=seed, reuse=reuse, progress=progress,
                            check_sizes=rs[1:] if dynamic else (), label_dir=parity_labels, option="--out")
            rec = _onnx_record(r, format_resolution((h, w)), precision, dynamic)
            records.append(rec)
            log(_describe(rec))
            if want_trt and trt_ok:
                from exporters.trt import build_engine, dynamic_profile

                shapes = {r.sidecar["input"]["name"]: dynamic_profile(g.label_input_nc if kind == "labels" else g.input_nc, rs, batch)} if dynamic else None
                e = build_engine(r.onnx_path, out_dir, workspace_gb=workspace_gb, dynamic_shapes=shapes,
                                 reuse=reuse, progress=progress, flavour=flavour, targets=trt_targets, option="--out")
                erec = _engine_record(e, rec)
                records.append(erec)
                log(_describe(erec))
    if want_trt and not trt_ok:
        records.append({"kind": "trt", "skipped": trt_reason})
        log(f"TensorRT engines skipped: {trt_reason}")
    return records


def _check_memory(models: list[tuple[Any, list[tuple[int, int]]]], batch: int) -> None:
    """UserError before anything is exported when a size's forward will not fit in the memory available:
    the estimate ``asapbench run`` refuses cells by (:mod:`asapbench.bench.memory`). The export traces and
    the parity gate runs the PyTorch fp32 forward on the CPU at every size, whatever --precision."""
    from asapbench.bench.memory import estimate, fits

    for g, rs in models:
        for h, w in rs:
            ok, why = fits(estimate(g, batch, h, w, "fp32"), "cpu")
            if not ok:
                raise UserError(f"--res {h}x{w}: not exported: a forward {why}")


def _onnx_record(r, resolution: str, precision: str, dynamic: bool) -> dict[str, Any]:
    """What ``export`` reports for one ONNX file (from its export result and sidecar)."""
    s = r.sidecar
    par = s.get("parity") or {}
    return {
        "kind": "onnx",
        "path": str(r.onnx_path),
        "sidecar": str(r.sidecar_path),
        "model": s["model"],
        "preset": s["preset"],
        "resolution": resolution,
        "precision": precision,
        "input": s.get("input_kind", "onehot"),
        "dynamic": dynamic,
        "reused": r.reused,
        "mb": round(s["onnx_bytes"] / 2**20, 2),
        "export_s": s.get("export_seconds"),
        "max_abs_err": par.get("max_abs_err"),
        "psnr_db": par.get("psnr_db"),
        "output_std": par.get("output_std"),
        "parity": "passed" if par.get("passed") else ("skipped (--no-check)" if not par else "FAILED"),
    }


def _engine_record(e, onnx_rec: dict[str, Any]) -> dict[str, Any]:
    """What ``export`` reports for one TensorRT engine built from the ONNX file of ``onnx_rec``."""
    return {
        "kind": "trt",
        "path": str(e.engine_path),
        "sidecar": str(e.sidecar_path),
        **{k: onnx_rec[k] for k in ("model", "preset", "resolution", "precision", "input", "dynamic")},
        "reused": e.reused,
        "mb": round(e.sidecar["engine_bytes"] / 2**20, 2),
        "build_s": e.sidecar["build_seconds"],
        "flavour": e.flavour,
        "trt": e.label,
        "targets": e.targets,
        "layer_precisions": e.sidecar.get("layer_precisions_text"),
        "executed": e.sidecar.get("executed", False),
        "note": e.sidecar.get("note", ""),
    }


def _describe(rec: dict[str, Any]) -> str:
    state = "reused" if rec.get("reused") else "wrote"
    if rec["kind"] == "trt":
        return (f"{state} {rec['path']} ({rec['mb']} MB, {rec.get('trt', 'TensorRT')}, built in {rec['build_s']} s; "
                f"layers: {rec.get('layer_precisions') or '?'}; {rec.get('note') or 'not executed'})")
    par = rec["parity"]
    if rec.get("max_abs_err") is not None:
        par += f": max |err| {rec['max_abs_err']:.2e}, PSNR {rec['psnr_db']:.1f} dB, output std {rec['output_std']:.2f}"
    return f"{state} {rec['path']} ({rec['mb']} MB, exported in {rec['export_s']} s; parity {par})"


def stage_bar(console):
    """The transient line ``export <stage> <elapsed>`` on ``console`` (off a terminal: none, it would print a
    blank line). A stage longer than the terminal wraps at spaces once the elapsed time has been left out."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    from asapbench.ui import FitProgress

    elapsed = TimeElapsedColumn()
    return FitProgress(SpinnerColumn(), TextColumn("[bold]export[/bold] {task.description}",
                                                   table_column=Column(no_wrap=False)), elapsed, drop=(elapsed,),
                       console=console, transient=True, redirect_stdout=False, redirect_stderr=False,
                       disable=not console.is_terminal)


def register(app) -> None:
    """Add the `export` command to the Typer app."""

    @app.command("export", no_args_is_help=True)
    def export_cli(
        model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registered generator (see `asapbench models`).")],
        res: Annotated[list[str], typer.Option("--res", "-r", metavar="RES", help="Resolution: 1024 (square), HxW such as 256x512, or 'paper'; repeatable.")],
        engine: Annotated[Engine, typer.Option("--engine", "-e", metavar="KIND", help="onnx: ONNX only; trt: ONNX + TensorRT engines; all: both, skipping TensorRT where it cannot run.")] = Engine.onnx,
        precision: Annotated[Precision, typer.Option("--precision", metavar="NAME", help="fp32, or fp16 compute with fp32 input/output (InstanceNorm etc. stay fp32).")] = Precision.fp32,
        preset: Annotated[Optional[str], typer.Option("--preset", "-p", metavar="NAME", help="Preset (default: the paper's configuration for each --res).")] = None,
        checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", metavar="FILE", help="Generator .pth (official or from `asapbench train`); default: random weights.")] = None,
        dynamic: Annotated[bool, typer.Option("--dynamic", metavar="", rich_help_panel="ONNX", help="Dynamic batch/height/width (one ONNX; a min/opt/max TensorRT profile over the --res values).")] = False,
        out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")] = DEFAULT_OUT,
        check: Annotated[bool, typer.Option("--check/--no-check", metavar="", rich_help_panel="ONNX", help="Parity gate against PyTorch in onnxruntime.")] = True,
        seed: Annotated[int, typer.Option("--seed", metavar="N", rich_help_panel="ONNX", help="Seed of random weights and of the parity inputs.")] = 0,
        workspace_gb: Annotated[float, typer.Option("--workspace-gb", metavar="GIB", rich_help_panel="TensorRT", help="TensorRT builder workspace limit (GiB; a limit, not an allocation); 12 fits every engine of results/trt-build (SPADE fp16 at 2048x2048 needs 11).")] = 12.0,
        trt: Annotated[TrtFlavour, typer.Option("--trt", metavar="NAME", rich_help_panel="TensorRT", help="TensorRT flavour: auto (whichever is installed), tensorrt (enterprise 10.x/11.x: every GPU, builds on it) or rtx (TensorRT for RTX: builds without a GPU, runs on RTX GPUs).")] = TrtFlavour.auto,
        target_sm: Annotated[Optional[str], typer.Option("--target-sm", metavar="SMS", rich_help_panel="TensorRT", help="Compute capabilities to build for, e.g. 86,89,120 (TensorRT-RTX; default its portable set 86,89,120). Enterprise TensorRT builds for this GPU only.")] = None,
        batch: Annotated[int, typer.Option("--batch", metavar="N", rich_help_panel="ONNX", help="Batch size of the exported graph (static), or the optimum (dynamic).")] = 1,
        opset: Annotated[Optional[int], typer.Option("--opset", metavar="N", rich_help_panel="ONNX", help="ONNX opset (default 20).")] = None,
        force: Annotated[bool, typer.Option("--force", metavar="", help="Re-export and rebuild even when a matching file exists.")] = False,
        parity_labels: Annotated[Optional[Path], typer.Option("--parity-labels", metavar="DIR", rich_help_panel="ONNX", help="Folder of label-map PNGs (e.g. Cityscapes *_labelIds.png) to gate parity on, besides the built-in synthetic label maps.")] = None,
        input: Annotated[InputKind, typer.Option("--input", metavar="KIND", help=INPUT_HELP)] = InputKind.onehot,
        lowres_conv: Annotated[Optional[str], typer.Option("--lowres-conv", metavar="FORM", help=LOWRES_HELP)] = None,
    ) -> None:
        """Export a generator to ONNX (fp32/fp16) and TensorRT, checking parity with PyTorch."""
        from rich.console import Console

        err, std = Console(stderr=True), Console()
        with stage_bar(err) as bar:
            task = bar.add_task("starting", total=None)

            def log(msg: str) -> None:
                # one result line per file on stdout; through the bar's console when both are the terminal
                (bar.console if std.is_terminal and err.is_terminal else std).print(msg, markup=False, highlight=False, soft_wrap=True)

            export_models(
                model, res, engine=engine, precision=precision, preset=preset, checkpoint=checkpoint,
                dynamic=dynamic, out=out, check=check, seed=seed, workspace_gb=workspace_gb, batch=batch,
                opset=opset, reuse=not force, log=log, parity_labels=parity_labels, trt=trt, target_sm=target_sm,
                input=input, lowres_conv=lowres_conv,
                progress=lambda s: bar.update(task, description=s),
            )
