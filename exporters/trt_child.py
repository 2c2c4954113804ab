"""A TensorRT build in a fresh Python process, so that its peak RSS is the build's alone
(``asapbench engines``; see :mod:`exporters.trt`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from asapbench.errors import UserError
from exporters.trt_build import build_engine


def build_in_child(onnx_path: str | Path, out_dir: str | Path, timeout_s: float = 3600, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`build_engine` in a fresh Python process and return ``{"ok", "sidecar" | "error",
    "peak_rss_mb", "wall_s"}``: the peak RSS is the child's own (``ru_maxrss``), i.e. the build alone."""
    import subprocess
    import sys

    args = {"onnx_path": str(onnx_path), "out_dir": str(out_dir), **kwargs}
    code = "import sys; from exporters.trt_child import _child_main; _child_main()"
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", code], input=json.dumps(args), capture_output=True, text=True, check=False,
                           timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"build timed out after {timeout_s:g} s", "peak_rss_mb": None,
                "wall_s": round(time.perf_counter() - t0, 1)}
    wall = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode == 0 and lines:
        res = json.loads(lines[-1])
    else:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        res = {"ok": False, "error": f"build process exited {r.returncode} ({tail})", "peak_rss_mb": None}
    res["wall_s"] = wall
    return res


def _child_main() -> None:  # pragma: no cover - run in a child process by build_in_child
    import resource
    import sys

    args = json.loads(sys.stdin.read())
    try:
        r = build_engine(**args)
        res = {"ok": True, "reused": r.reused, "sidecar": r.sidecar, "engine": str(r.engine_path)}
    except UserError as exc:
        res = {"ok": False, "error": str(exc)}
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    sys.stdout.write(json.dumps(res, default=str) + "\n")
