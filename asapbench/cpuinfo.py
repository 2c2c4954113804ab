"""The CPU's feature flags as /proc/cpuinfo spells them (a leaf: the standard library only).

One reader for what needs them: the environment snapshot's ISA flags and the bf16 check
(:mod:`asapbench.bench.system`), and the cache key of ASAP-Net's compiled pixelwise kernel
(:mod:`asapbench.models.fused_kernel`).
"""

from __future__ import annotations


def cpuinfo_text() -> str | None:
    """The text of /proc/cpuinfo, or None where there is none (not Linux, or unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def flags_line(text: str | None = None) -> str | None:
    """The first ``flags`` (x86) or ``Features`` (Arm) line of /proc/cpuinfo (``text``: its text, for tests), or None."""
    text = cpuinfo_text() if text is None else text
    return next((ln for ln in (text or "").splitlines() if ln.lower().startswith(("flags", "features"))), None)


def cpu_flags(text: str | None = None) -> set[str] | None:
    """The flags of :func:`flags_line` as a set (None where there is no flags line)."""
    line = flags_line(text)
    return None if line is None else set(line.split(":", 1)[-1].split())
