"""Environment snapshot stored with every benchmark result.

Library versions are read from package metadata (:mod:`asapbench.versions`), so TensorRT, onnx and
onnxruntime are never imported just to learn their version. GPU clocks come from ``nvidia-smi``
where it exists.
"""

from __future__ import annotations

import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asapbench.bench.timing import cpu_count
from asapbench.versions import package_version

#: environment keys copied into every CSV row (the full snapshot goes to bench.json)
ROW_ENV_KEYS = (
    "cpu_model",
    "gpu_name",
    "driver_version",
    "cuda_version",
    "torch_version",
    "onnxruntime_version",
    "tensorrt_version",
    "git_sha",
)

def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) or platform, e.g. 'AMD EPYC 7763 64-Core Processor'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha(path: str | Path | None = None) -> str | None:
    """Commit of the asapbench checkout (``+dirty`` when tracked files changed), None outside git."""
    if shutil.which("git") is None:
        return None
    cwd = str(Path(path) if path else Path(__file__).resolve().parents[2])
    sha = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd)
    if not sha:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd)
    return sha + ("+dirty" if dirty else "")


def nvidia_smi() -> list[dict[str, str]]:
    """Per-GPU name, driver, clocks, power limit, temperature and persistence mode from nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    fields = [
        "name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
        "power.limit", "temperature.gpu", "persistence_mode", "memory.total",
    ]
    out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if not out:
        return []
    gpus = []
    for line in out.splitlines():
        vals = [v.strip() for v in line.split(",")]
        if len(vals) == len(fields):
            gpus.append(dict(zip(fields, vals)))
    return gpus


def torch_info() -> dict[str, Any]:
    """torch build, threads and CUDA device properties (no CUDA context is created without a GPU)."""
    import torch

    info: dict[str, Any] = {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": None,
        "cuda_available": torch.cuda.is_available(),
        "gpu_name": None,
        "gpu_memory_gb": None,
        "gpu_capability": None,
        # torch fp32 on Ampere+ runs cuDNN convolutions in TF32 unless this is False: say which was timed
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    if info["cuda_available"]:
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(
            gpu_name=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 2),
            gpu_capability=f"{props.major}.{props.minor}",
            cudnn_version=torch.backends.cudnn.version(),
        )
    return info


def snapshot(argv: list[str] | None = None) -> dict[str, Any]:
    """The environment of a benchmark run: machine, GPU, driver, libraries, git commit, command line."""
    from asapbench import __version__

    env: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "asapbench_version": __version__,
        "git_sha": git_sha(),
        "command": shlex.join(["asapbench", *(sys.argv[1:] if argv is None else argv)]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": cpu_count(),
    }
    env.update(torch_info())
    smi = nvidia_smi()
    env["nvidia_smi"] = smi
    env["driver_version"] = smi[0]["driver_version"] if smi else None
    for mod in ("numpy", "onnx", "onnxscript", "onnxruntime", "tensorrt"):
        env[f"{mod}_version"] = package_version(mod)
    from asapbench.versions import onnxruntime_conflict

    env["onnxruntime_install_conflict"] = onnxruntime_conflict()
    return env


def machine_label(env: dict[str, Any], device: str) -> str:
    """Short label for the machine a row ran on: the GPU name on CUDA, else CPU model and threads."""
    if device == "cuda" and env.get("gpu_name"):
        return str(env["gpu_name"])
    return f"{env.get('cpu_model') or 'cpu'} ({env.get('cpu_count', '?')} cpus)"
