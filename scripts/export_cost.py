"""What a gated export costs: seconds and peak resident memory of `asapbench export`, per model x precision.

    python scripts/export_cost.py [--res 2048x2048] [--models asapnet,pix2pixhd,...] [--precisions fp32,fp16]
                                  [--out results/export-cost]

Each export runs as its own process (`python -m asapbench export ... --engine onnx`, random weights, the
default preset for the resolution, the parity gate on) into a fresh temporary folder, so nothing is reused
and the process's peak RSS (`ru_maxrss` from wait4) is that export's alone. The stage times come from the
export's sidecar: tracing (`torch.onnx.export`), fp16 calibration and conversion, and the parity gate with
its PyTorch forward and its onnxruntime run (and a float64 forward where the gate needed one). Writes
export-cost.json (rows + environment), export-cost.csv and export-cost.md after every export.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("model", "preset", "resolution", "precision", "status", "wall_s", "peak_rss_gb", "trace_s", "fp16_s",
           "gate_s", "gate_torch_s", "gate_onnxruntime_s", "gate_float64_s", "max_abs_err", "psnr_db", "gate_runtime")


def _r(v):
    return None if v is None else round(float(v), 1)


def _one(model: str, res: str, precision: str, work: Path, keep: Path | None = None) -> dict:
    out = work / f"{model}-{precision}"
    cmd = [sys.executable, "-m", "asapbench", "export", "--model", model, "--res", res, "--precision", precision,
           "--engine", "onnx", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        log.seek(0)
        tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
    code = os.waitstatus_to_exitcode(status)
    row = {"model": model, "resolution": res, "precision": precision, "wall_s": round(wall, 1),
           "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2), "exit_code": code}
    sidecars = sorted(out.glob("*.json"))
    if code != 0 or not sidecars:
        row["status"] = f"FAILED (exit {code}): {tail[0][:200]}"
        return row
    side = json.loads(sidecars[0].read_text())
    if keep is not None:  # e.g. a fresh `asapbench run --cache-dir` cache: its onnx/ folder
        keep.mkdir(parents=True, exist_ok=True)
        for f in sorted(out.iterdir()):
            shutil.move(str(f), str(keep / f.name))
    par = side.get("parity") or {}
    secs = [s.get("seconds") or {} for s in par.get("samples", [])]
    row.update({
        "status": "passed" if par.get("passed") else "gate failed",
        "preset": side.get("preset"),
        "trace_s": _r(side.get("export_seconds")),
        "fp16_s": _r(side.get("fp16_convert_seconds")),
        "gate_s": round(par["seconds"], 1) if par.get("seconds") is not None else None,
        "gate_torch_s": round(sum(s.get("torch", 0) for s in secs), 1),
        "gate_onnxruntime_s": round(sum(s.get("onnxruntime", 0) for s in secs), 1),
        "gate_float64_s": round(sum(s.get("float64", 0) for s in secs), 1) or None,
        "gate_samples": len(secs),
        "max_abs_err": par.get("max_abs_err"),
        "psnr_db": par.get("psnr_db"),
        "gate_runtime": par.get("runtime"),
        "onnx_mb": round(side.get("onnx_bytes", 0) / 2**20, 1),
    })
    return row


def _markdown(rows: list[dict], env: dict) -> str:
    head = ("| model | preset | precision | status | wall s | peak RSS GB | trace s | fp16 calibrate+convert s | gate s "
            "| gate: torch forward s | gate: onnxruntime run s | gate: float64 s | max abs err | PSNR dB |")
    lines = [
        f"# Cost of a gated export at {rows[0]['resolution'] if rows else '?'}",
        "",
        f"`python scripts/export_cost.py` on {env.get('cpu_model')} ({env.get('cpu_count')} cpus, "
        f"{env.get('ram_gib')} GiB), torch {env.get('torch_version')}, onnx {env.get('onnx_version')}, "
        f"onnxruntime {env.get('onnxruntime_version')}, git {str(env.get('git_sha'))[:10]}, {env.get('timestamp')}. "
        "One process per export (random weights, default preset, parity gate on, nothing reused); peak RSS is that "
        "process's `ru_maxrss`; stage seconds come from the export's sidecar.",
        "",
        head,
        "|" + "---|" * 14,
    ]

    def f(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
        return str(v)

    for r in rows:
        lines.append("| " + " | ".join(f(r.get(c)) for c in (
            "model", "preset", "precision", "status", "wall_s", "peak_rss_gb", "trace_s", "fp16_s", "gate_s",
            "gate_torch_s", "gate_onnxruntime_s", "gate_float64_s", "max_abs_err", "psnr_db")) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", default="2048x2048")
    ap.add_argument("--models", default="asapnet,pix2pixhd,pix2pixhd-local,spade,pix2pix")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--out", default=str(ROOT / "results" / "export-cost"))
    ap.add_argument("--keep", default=None, help="move the exported files here afterwards (default: delete them)")
    a = ap.parse_args()
    from asapbench.bench.system import snapshot
    from asapbench.fsutil import atomic_write_json, atomic_write_text

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = snapshot(["scripts/export_cost.py", *sys.argv[1:]])
    env["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    rows: list[dict] = []
    for model in a.models.split(","):
        for precision in a.precisions.split(","):
            print(f"export-cost: {model} {a.res} {precision} ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="export-cost-") as work:
                row = _one(model, a.res, precision, Path(work), Path(a.keep) if a.keep else None)
            print(f"  {row['status']}: {row['wall_s']} s, peak RSS {row['peak_rss_gb']} GB", flush=True)
            rows.append(row)
            atomic_write_json(out / "export-cost.json", {"environment": env, "rows": rows})
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow([r.get(c) for c in COLUMNS])
            atomic_write_text(out / "export-cost.csv", buf.getvalue())
            atomic_write_text(out / "export-cost.md", _markdown(rows, env))
    return 0 if all(r["status"] == "passed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
