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
    for line in (_cpuinfo_text() or "").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


#: CPU flags (as /proc/cpuinfo spells them) that give native bf16 arithmetic: AVX-512 BF16 (Intel Cooper
#: Lake and later, AMD Zen 4 and later) or AMX BF16 (Intel Sapphire Rapids and later)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_text() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and how that was decided (or why not).

    Linux: the ``flags`` line of /proc/cpuinfo (``cpuinfo``: its text, for tests) must name
    ``avx512_bf16`` or ``amx_bf16``. Without /proc/cpuinfo: torch's own CPU capability checks
    (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``) when this torch has them.
    Anything else is unknown, and unknown counts as unsupported (the reason says so): without those
    instructions torch emulates bf16 in fp32 arithmetic, which times nothing a deployment would use.
    Tests monkeypatch this function to cover both outcomes whatever the machine.
    """
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    need = " or ".join(BF16_CPU_FLAGS)
    flag_lines = [ln for ln in (text or "").splitlines() if ln.lower().startswith(("flags", "features"))]
    if flag_lines:
        flags = set(flag_lines[0].split(":", 1)[-1].split())
        have = [f for f in BF16_CPU_FLAGS if f in flags]
        if have:
            return True, f"CPU flags: {', '.join(have)}"
        return False, (f"bf16 on the CPU needs the {need} instructions (AVX-512 BF16: Intel Cooper Lake or "
                       f"later, AMD Zen 4 or later; AMX: Intel Sapphire Rapids or later); this CPU "
                       f"({cpu_model()}) has neither in /proc/cpuinfo; use --precision fp32")
    try:
        import torch

        checks = [(name, getattr(torch.cpu, attr, None)) for name, attr in
                  (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))]
        known = [(name, fn()) for name, fn in checks if callable(fn)]
    except Exception:  # noqa: BLE001 - an unknown answer is reported as unknown
        known = []
    have = [name for name, ok in known if ok]
    if have:
        return True, f"torch.cpu reports {', '.join(have)}"
    if known:
        return False, (f"bf16 on the CPU needs the {need} instructions; torch.cpu reports neither on this CPU "
                       f"({cpu_model()}); use --precision fp32")
    return False, (f"cannot tell whether this CPU ({cpu_model()}) has the {need} instructions (no /proc/cpuinfo "
                   "flags and no torch.cpu capability check), so bf16 is not timed; use --precision fp32")


#: CPU flags (as /proc/cpuinfo spells them) that decide the fp32/bf16 GEMM peak: AVX2/FMA, AVX-512, the bf16
#: dot products (AVX-512 BF16) and the AMX tiles
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")


def cpu_isa(cpuinfo: str | None = None) -> dict[str, Any]:
    """Which of :data:`ISA_FLAGS` this CPU has (``flags``: those present, in that order), read from the first
    ``flags`` line of /proc/cpuinfo (``cpuinfo``: its text, for tests); ``source`` None where there is none."""
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    line = next((ln for ln in (text or "").splitlines() if ln.lower().startswith(("flags", "features"))), None)
    if line is None:
        return {"flags": [], "source": None}
    have = set(line.split(":", 1)[-1].split())
    return {"flags": [f for f in ISA_FLAGS if f in have], "source": "/proc/cpuinfo"}


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
        "cpu_bf16": list(cpu_bf16_support()),
        "cpu_isa": cpu_isa(),
    }
    env.update(torch_info())
    smi = nvidia_smi()
    env["nvidia_smi"] = smi
    env["driver_version"] = smi[0]["driver_version"] if smi else None
    for mod in ("numpy", "onnx", "onnxscript", "onnxruntime", "tensorrt", "openvino"):
        env[f"{mod}_version"] = package_version(mod)
    from asapbench.versions import onnxruntime_conflict

    env["onnxruntime_install_conflict"] = onnxruntime_conflict()
    return env


def machine_label(env: dict[str, Any], device: str) -> str:
    """Short label for the machine a row ran on: the GPU name on CUDA, else CPU model and threads."""
    if device == "cuda" and env.get("gpu_name"):
        return str(env["gpu_name"])
    return f"{env.get('cpu_model') or 'cpu'} ({env.get('cpu_count', '?')} cpus)"
