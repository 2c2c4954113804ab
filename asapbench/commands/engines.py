"""`asapbench engines`: build TensorRT engines for exported ONNX files and report what the builder did
(parse ok, build seconds, peak RSS, engine size, layer precisions), one build process per engine.

With TensorRT for RTX this runs on a machine without a GPU: the engines are built ahead of time for
the target compute capabilities and **never executed**; the report says so. Typical use (the
``results/trt-build`` table)::

    asapbench export --model spade --res 1024x1024 --precision fp16 --no-check --out out/trt-build/onnx
    asapbench engines out/trt-build/onnx --trt rtx --target-sm 86,89,120 --out results/trt-build --no-keep-engines
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from asapbench.errors import UserError

MODEL_ORDER = ("asapnet", "pix2pixhd", "pix2pixhd-local", "spade", "pix2pix")
COLUMNS = ("model", "preset", "resolution", "precision", "parse", "build_s", "peak_rss_mb", "engine_mb",
           "conv", "matmul", "norm", "layers", "status")


def _onnx_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.onnx"))
        elif p.is_file() and p.suffix == ".onnx":
            files.append(p)
        else:
            raise UserError(f"{str(p)!r} is neither an .onnx file nor a folder of them; export with `asapbench export` first")
    if not files:
        raise UserError(f"no .onnx files in {', '.join(map(str, paths))}; export with `asapbench export` first")
    return files


def _onnx_meta(path: Path) -> dict[str, Any]:
    from exporters.cache import onnx_sidecar_problem, read_json

    side, why = read_json(path.with_suffix(".json"))
    if why or onnx_sidecar_problem(side):
        side = {}
    res = side.get("resolution")
    par = side.get("parity")
    return {
        "model": side.get("model") or path.stem,
        "preset": side.get("preset"),
        "resolution": f"{res[0]}x{res[1]}" if isinstance(res, list) and len(res) == 2 else None,
        "precision": side.get("precision"),
        "dynamic": bool((side.get("key") or {}).get("dynamic")),
        "onnx_mb": round(path.stat().st_size / 2**20, 1),
        "input": side.get("input"),
        "parity": "passed" if (par or {}).get("passed") else ("skipped (--no-check)" if not par else "FAILED"),
    }


def _cell(counts: dict | None, cat: str) -> str:
    c = (counts or {}).get(cat) or {}
    return " + ".join(f"{n} {p}" for p, n in sorted(c.items(), key=lambda x: -x[1])) or "-"


def build_report(
    onnx: Sequence[str],
    out: str | Path = "results/trt-build",
    work: str | Path | None = None,
    trt: str = "auto",
    target_sm: str | None = None,
    workspace_gb: float = 12.0,
    keep_engines: bool = True,
    notes: Sequence[str] = (),
    max_res: str | None = None,
    clear_notes: bool = False,
    log=print,
) -> list[dict[str, Any]]:
    """Build an engine for every ONNX in ``onnx`` (files or folders), each in its own process, and
    write ``build.json``/``build.csv``/``build.md`` under ``out`` (rows of earlier runs for other cells
    are kept: the report grows run by run, and a cell -- model, resolution, precision, flavour version,
    targets -- built again replaces its earlier row, whichever preset or file it came from; earlier
    ``notes`` are kept too, with ``notes`` added, unless ``clear_notes``). A dynamic ONNX
    gets the profile min = its export resolution, opt = max = ``max_res`` (default: the export resolution).
    Returns the rows of this run."""
    from asapbench.fsutil import (
        atomic_write_json,
        atomic_write_text,
        ensure_writable_dir,
    )
    from exporters import trt_flavours as F
    from exporters.trt import build_in_child

    files = _onnx_files(onnx)
    f = F.resolve_flavour(trt)
    targets = F.resolve_targets(f, F.parse_targets(target_sm), F.load(f))
    out_dir = ensure_writable_dir(out, "--out folder")
    work_dir = ensure_writable_dir(work or Path(files[0]).parent / "engines", "--work folder")
    rows = []
    for path in files:
        meta = _onnx_meta(path)
        log(f"building {path.name} ({F.describe(f)}, targets {','.join(map(str, targets))}) ...")
        shapes, profile = None, None
        if meta.pop("dynamic") and meta.get("input") and meta.get("resolution"):
            from asapbench.resolution import parse_resolution

            h, w = (int(v) for v in meta["resolution"].split("x"))
            mh, mw = parse_resolution(max_res) if max_res else (h, w)
            c = int(meta["input"]["shape"][1])
            shapes = {meta["input"]["name"]: [[1, c, h, w], [1, c, mh, mw], [1, c, mh, mw]]}
            profile = f"dynamic {h}x{w}..{mh}x{mw}"
            meta["resolution"] = f"{mh}x{mw}"
        meta.pop("input", None)
        res = build_in_child(path, work_dir, flavour=f.name, targets=targets, workspace_gb=workspace_gb, reuse=False,
                             dynamic_shapes=shapes)
        side = res.get("sidecar") or {}
        err = res.get("error")
        row = {
            **meta,
            "onnx": path.name,
            "flavour": f.name,
            "trt": F.describe(f),
            "targets": targets,
            "parse": "FAILED" if err and ("cannot parse" in err or "not a valid ONNX" in err) else "ok",
            "build_s": side.get("build_seconds"),
            "parse_s": side.get("parse_seconds"),
            "peak_rss_mb": res.get("peak_rss_mb"),
            "wall_s": res.get("wall_s"),
            "engine_mb": round(side["engine_bytes"] / 2**20, 1) if side.get("engine_bytes") else None,
            "layer_precisions": side.get("layer_precisions"),
            "conv": _cell(side.get("layer_precisions"), "convolution"),
            "matmul": _cell(side.get("layer_precisions"), "matmul"),
            "norm": _cell(side.get("layer_precisions"), "normalization"),
            "layers": side.get("layers_built"),
            "status": ("built, not executed" if res.get("ok") else f"FAILED: {err}") + (f" ({profile})" if profile else ""),
            "profile": profile,
            "workspace_gb": workspace_gb,
        }
        rows.append(row)
        log(f"  {row['status']}: {row['build_s']} s, peak RSS {row['peak_rss_mb']} MB, {row['engine_mb']} MB; "
            f"conv {row['conv']}; matmul {row['matmul']}; norm {row['norm']}")
        if not keep_engines and res.get("engine"):
            for p in (Path(res["engine"]), Path(res["engine"] + ".json")):
                p.unlink(missing_ok=True)
        _write(out_dir, rows, f, targets, atomic_write_json, atomic_write_text, notes, clear_notes)
    return rows


def _environment(f, targets) -> dict[str, Any]:
    from exporters import trt_flavours as F

    env: dict[str, Any] = {}
    try:
        from asapbench.bench.system import snapshot

        env = snapshot()
    except Exception as exc:  # the snapshot is informational
        env = {"snapshot_error": str(exc)[:200]}
    try:
        mem_kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        env["ram_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    env.update({"tensorrt_flavour": f.name, "tensorrt_flavour_version": F.describe(f), "targets": targets,
                "nvidia_driver": F.nvidia_driver_version(), "gpu_visible": F.gpu_visible()[0],
                "machine": platform.machine()})
    return env


def _write(out_dir: Path, new_rows: list[dict], f, targets, atomic_write_json, atomic_write_text,
           notes: Sequence[str] = (), clear_notes: bool = False) -> None:
    path = out_dir / "build.json"
    try:
        prev = json.loads(path.read_text())
        old, old_notes = prev.get("rows", []), prev.get("notes", [])
    except (OSError, ValueError, AttributeError):
        old, old_notes = [], []
    all_notes = list(dict.fromkeys([*([] if clear_notes else old_notes), *notes]))

    def cell(r: dict) -> tuple:  # one row per cell: a rebuild replaces it, whichever preset or file it came from
        if r.get("model") and r.get("resolution") and r.get("precision"):
            return (r["model"], r["resolution"], r["precision"], tuple(r.get("targets") or ()), r.get("trt"))
        return (r.get("onnx"), tuple(r.get("targets") or ()), r.get("trt"))

    ident = {cell(r) for r in new_rows}
    rows = [r for r in old if cell(r) not in ident] + new_rows
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}

    def order(r):
        h, w = (int(v) for v in (r.get("resolution") or "0x0").split("x"))
        return (rank.get(r.get("model"), 99), r.get("model") or "", h * w, h, r.get("precision") or "")

    rows.sort(key=order)
    env = _environment(f, targets)
    atomic_write_json(path, {"environment": env, "notes": all_notes, "rows": rows})
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = (*COLUMNS, "onnx", "onnx_mb", "parity", "trt", "targets", "workspace_gb", "wall_s")
    w.writerow(cols)
    for r in rows:
        w.writerow([",".join(map(str, r[c])) if c == "targets" else r.get(c) for c in cols])
    atomic_write_text(out_dir / "build.csv", buf.getvalue())
    atomic_write_text(out_dir / "build.md", _markdown(rows, env, all_notes))


def _parity_line(rows: list[dict]) -> str:
    """What the report says about the parity of the ONNX files its engines came from (the rows' ``parity``)."""
    gated = [f"{r['model']} {r['resolution']} {r['precision']}" for r in rows if r.get("parity") == "passed"]
    skipped = sum(1 for r in rows if str(r.get("parity", "")).startswith("skipped"))
    parts = []
    if gated:
        parts.append(f"{len(gated)} of the ONNX files passed the export's parity gate against PyTorch ({', '.join(gated)})")
    if skipped:
        parts.append(f"{skipped} were exported with `--no-check` (the gate skipped to keep the exports within this "
                     "machine's time; parity of these exporters is covered by `tests/test_export.py` and the gated "
                     "exports of `results/export-cost`)")
    return ("; ".join(parts) + ". " if parts else "") + (
        "Weights are random (seeded), so sizes and precisions are those of the real architectures.")


def _markdown(rows: list[dict], env: dict, notes: Sequence[str] = ()) -> str:
    built = sum(1 for r in rows if r["status"].startswith("built"))
    lines = [
        "# TensorRT engine builds (no GPU)",
        "",
        f"{built} of {len(rows)} engines built with {env.get('tensorrt_flavour_version')} for targets "
        f"{', '.join(str(t) for t in env.get('targets') or [])} (compute capabilities x10) on a machine "
        f"{'with' if env.get('gpu_visible') else 'without'} a GPU. "
        "**No engine was executed**: these are build results (parse, build time, memory, size and the "
        "builder's own layer precisions), not latencies. TensorRT-RTX compiles kernels just in time on the "
        "target GPU at first inference.",
        "",
        "| model | preset | resolution | precision | parse | build s | peak RSS MB | engine MB | conv | matmul | norm | layers | status |",
        "|---|---|---|---|---|---:|---:|---:|---|---|---|---:|---|",
    ]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLUMNS) + " |")
    models = sorted({r["model"] for r in rows}, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else 99, m))
    res = sorted({r["resolution"] for r in rows if r.get("resolution")}, key=lambda s: [int(v) for v in s.split("x")])
    precs = sorted({r["precision"] for r in rows if r.get("precision")}, key=lambda p: p != "fp16")
    have = {(r["model"], r["resolution"], r["precision"]) for r in rows}
    missing = [f"{m} {x} {p}" for p in precs for m in models for x in res if (m, x, p) not in have]
    lines += [
        "",
        "Columns: *parse* -- the ONNX parser's verdict; *build s* -- `build_serialized_network` alone; *peak RSS* -- "
        "the build process's peak resident memory (`ru_maxrss`: Python, torch and TensorRT-RTX included, one process "
        "per engine); *conv / matmul / norm* -- built layers per category and the precision they run in, read from the "
        "builder's layer information (`ProfilingVerbosity.DETAILED`, verbose build log, no GPU needed). These count "
        "*built* layers (kernels), not ONNX nodes: one InstanceNorm can become several reduction kernels at large "
        "sizes. A fused convolution counts in its weights' precision; a normalisation kernel in its output type, or, "
        "when a Cast of the graph is fused into it (half to float before the mean, float to half after the scale), "
        "in the wider type; kernels that only move integer indices are left out. The ONNX parser turns "
        "BatchNormalization (SPADE, pix2pix) into scale layers, so those models have no normalisation column; "
        "*layers* -- built layers in all. fp32 engines allow TF32 (TensorRT's default).",
        "",
        _parity_line(rows),
        "",
        f"Missing cells (model x resolution x precision with no row): {', '.join(missing) if missing else 'none'}.",
        "",
        *([ "## Notes", "", *[f"- {n}" for n in notes], ""] if notes else []),
        "## Environment",
        "",
    ]
    for k in ("timestamp", "command", "git_sha", "cpu_model", "cpu_count", "ram_gib", "platform", "python", "torch_version",
              "onnx_version", "tensorrt_flavour_version", "nvidia_driver", "gpu_visible"):
        if k in env:
            lines.append(f"- {k}: {env[k]}")
    return "\n".join(lines) + "\n"


def register(app) -> None:
    """Add the `engines` command to the Typer app."""

    @app.command("engines", no_args_is_help=True)
    def engines_cli(
        onnx: Annotated[list[str], typer.Argument(help="ONNX files or folders of them (from `asapbench export`).")],
        trt: Annotated[str, typer.Option("--trt", metavar="NAME", help="TensorRT flavour: auto, tensorrt or rtx.")] = "auto",
        target_sm: Annotated[str | None, typer.Option("--target-sm", metavar="SMS", help="Compute capabilities, e.g. 86,89,120 (TensorRT-RTX; default 86,89,120).")] = None,
        workspace_gb: Annotated[float, typer.Option("--workspace-gb", metavar="GIB", help="Builder workspace limit (GiB; a limit, not an allocation); 12 fits every engine of results/trt-build.")] = 12.0,
        out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", rich_help_panel="Report", help="Report folder (build.json, build.csv, build.md).")] = "results/trt-build",
        work: Annotated[str | None, typer.Option("--work", metavar="DIR", help="Engine folder (default: <first ONNX folder>/engines).")] = None,
        keep_engines: Annotated[bool, typer.Option("--keep-engines/--no-keep-engines", metavar="", rich_help_panel="Report", help="Keep the built engines (they are large).")] = True,
        max_res: Annotated[str | None, typer.Option("--max-res", metavar="HxW", help="Dynamic ONNX files: the profile's opt = max resolution (min: the export resolution).")] = None,
        note: Annotated[list[str] | None, typer.Option("--note", metavar="TEXT", rich_help_panel="Report", help="A line for the report's notes (e.g. why a cell is missing); repeatable, kept across runs.")] = None,
        clear_notes: Annotated[bool, typer.Option("--clear-notes", metavar="", rich_help_panel="Report", help="Drop the report's earlier notes (rows are kept; pass the notes that still hold with --note).")] = False,
    ) -> None:
        """Build TensorRT engines for ONNX files, one process each, and report parse/build/memory/precisions."""
        from asapbench.bounds import check

        check("--workspace-gb", workspace_gb)
        build_report(onnx, out=out, work=work, trt=trt, target_sm=target_sm, workspace_gb=workspace_gb,
                     keep_engines=keep_engines, notes=note or (), max_res=max_res, clear_notes=clear_notes)
