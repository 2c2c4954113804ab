"""Environment snapshot stored with every benchmark result.

Library versions are read from package metadata (:mod:`asapbench.versions`), so TensorRT, onnx and
onnxruntime are never imported just to learn their version. GPU clocks come from ``nvidia-smi``
where it exists.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asapbench.bench.timing import cpu_count
from asapbench.cpuinfo import cpu_flags, cpuinfo_text
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
    for line in (cpuinfo_text() or "").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


#: CPU flags (as /proc/cpuinfo spells them) that give native bf16 arithmetic: AVX-512 BF16 (Intel Cooper
#: Lake and later, AMD Zen 4 and later) or AMX BF16 (Intel Sapphire Rapids and later)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and how that was decided (or why not).

    Linux: the ``flags`` line of /proc/cpuinfo (``cpuinfo``: its text, for tests) must name
    ``avx512_bf16`` or ``amx_bf16``. Without /proc/cpuinfo: torch's own CPU capability checks
    (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``) when this torch has them.
    Anything else is unknown, and unknown counts as unsupported (the reason says so): without those
    instructions torch emulates bf16 in fp32 arithmetic, which times nothing a deployment would use.
    Tests monkeypatch this function to cover both outcomes whatever the machine.
    """
    need = " or ".join(BF16_CPU_FLAGS)
    flags = cpu_flags(cpuinfo)
    if flags is not None:
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
    have = cpu_flags(cpuinfo)
    if have is None:
        return {"flags": [], "source": None}
    return {"flags": [f for f in ISA_FLAGS if f in have], "source": "/proc/cpuinfo"}


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_repo() -> Path | None:
    """The root of the git checkout this package runs from, None when it does not run from one.

    Only the folder that holds the package itself counts (``<root>/asapbench`` with ``<root>/.git`` and a
    ``pyproject.toml`` naming asapbench): an installed copy inside some other repository (a virtual
    environment in a project's folder) has no sha of its own, and none of that repository is recorded.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        if not (root / ".git").exists() or 'name = "asapbench"' not in (root / "pyproject.toml").read_text():
            return None
    except (OSError, UnicodeDecodeError):
        return None
    return root


def _git_dir(root: Path) -> Path | None:
    """``root/.git``, or the folder a ``.git`` file (a worktree, a submodule) points at."""
    dot = root / ".git"
    if dot.is_dir():
        return dot
    try:
        text = dot.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:"):
        return None
    g = Path(text[len("gitdir:"):].strip())
    g = g if g.is_absolute() else root / g
    return g if g.is_dir() else None


_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def _head_sha(gitdir: Path) -> str | None:
    """The commit HEAD names, read from HEAD, the loose refs and packed-refs (git itself is not run)."""
    common = gitdir
    try:
        if (gitdir / "commondir").is_file():
            c = Path((gitdir / "commondir").read_text().strip())
            common = c if c.is_absolute() else gitdir / c
        head = (gitdir / "HEAD").read_text().strip()
        for _ in range(5):  # a symbolic ref may name another one
            if _SHA.fullmatch(head):
                return head
            if not head.startswith("ref:"):
                return None
            ref = head[4:].strip()
            if ".." in ref.split("/"):
                return None
            for base in (gitdir, common):
                if (base / ref).is_file():
                    head = (base / ref).read_text().strip()
                    break
            else:
                packed = common / "packed-refs"
                lines = packed.read_text().splitlines() if packed.is_file() else []
                found = [ln.split()[0] for ln in lines if ln.endswith(" " + ref) and not ln.startswith(("#", "^"))]
                return found[0] if found and _SHA.fullmatch(found[0]) else None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """git's offset varint (index v4 path compression)."""
    c = data[pos]
    pos += 1
    value = c & 127
    while c & 128:
        c = data[pos]
        pos += 1
        value = ((value + 1) << 7) | (c & 127)
    return value, pos


def _worktree_dirty(root: Path, gitdir: Path) -> bool | None:
    """Whether a tracked file differs from the index (git's own test: size and mtime, then the content's blob
    hash), read from ``.git/index`` without running git; None when the index cannot be read."""
    import hashlib
    import struct

    try:
        data = (gitdir / "index").read_bytes()
    except OSError:
        return None
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4):
        return None
    pos, prev = 12, b""
    try:
        for _ in range(count):
            start = pos
            mtime_s, mtime_ns = struct.unpack(">II", data[pos + 8:pos + 16])
            mode, size = struct.unpack(">I", data[pos + 24:pos + 28])[0], struct.unpack(">I", data[pos + 36:pos + 40])[0]
            sha = data[pos + 40:pos + 60]
            flags = struct.unpack(">H", data[pos + 60:pos + 62])[0]
            pos += 62
            skip = False
            if version >= 3 and flags & 0x4000:
                skip = bool(struct.unpack(">H", data[pos:pos + 2])[0] & 0x4000)  # skip-worktree
                pos += 2
            if version == 4:
                strip, pos = _varint(data, pos)
                end = data.index(b"\0", pos)
                name = prev[:len(prev) - strip] + data[pos:end]
                pos = end + 1
            else:
                end = data.index(b"\0", pos)
                name = data[pos:end]
                pos = start + ((end - start) // 8 + 1) * 8  # 1 to 8 NULs pad each entry to 8 bytes
            prev = name
            if skip or (flags >> 12) & 3 or mode >> 12 == 0o16:  # sparse, merge stages, submodules
                continue
            path = root / os.fsdecode(name)
            try:
                st = os.lstat(path)
            except OSError:
                return True  # a tracked file was deleted
            if (st.st_size & 0xFFFFFFFF) != size:
                return True
            if int(st.st_mtime) == mtime_s and st.st_mtime_ns % 1_000_000_000 == mtime_ns:
                continue
            content = os.readlink(path).encode() if mode >> 12 == 0o12 else path.read_bytes()
            if hashlib.sha1(b"blob %d\0" % len(content) + content).digest() != sha:
                return True
    except (IndexError, ValueError, struct.error, OSError):
        return None
    return False


def git_sha(path: str | Path | None = None) -> str | None:
    """Commit of the asapbench checkout (``+dirty`` when tracked files changed), None when the package does
    not run from its own git checkout (see :func:`_package_repo`); ``path``: that checkout's root instead.

    Read from the files in ``.git`` (HEAD, refs, index); git itself is never run, so no hook or
    configuration of a repository (``core.fsmonitor``, filters) runs a command.
    """
    root = Path(path) if path else _package_repo()
    gitdir = _git_dir(root) if root is not None else None
    if gitdir is None:
        return None
    sha = _head_sha(gitdir)
    if sha is None:
        return None
    return sha[:12] + ("+dirty" if _worktree_dirty(root, gitdir) else "")


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
