"""TensorRT engine cache keys and compatibility checks (pure Python: testable without TensorRT).

An engine is reused only when *every* key field matches the request and the engine file's sha256
still matches its sidecar. The key holds the ONNX sha256 (two models with the same topology but
different weights never share an engine: onnxruntime#6455), the TensorRT flavour and version and the
CUDA flavour of its wheel (no reuse after an upgrade: onnxruntime#22244), what the engine was built
for, and every build option (precision comes from the ONNX; workspace, optimisation level,
profiles, strongly typed flag).

What it was built for depends on the flavour:

- enterprise TensorRT (``flavour: tensorrt``) tunes for the build GPU: the CUDA runtime, the GPU name
  and its compute capability are key fields;
- TensorRT-RTX (``flavour: rtx``) builds ahead of time, possibly without any GPU, for a list of
  target compute capabilities: the ``targets`` list is a key field, the build machine's GPU is not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asapbench.fsutil import sha256_file

#: bump when the engine build or the sidecar changes meaning: invalidates every cached engine
ENGINE_FORMAT = 2
#: environment fields an enterprise-TensorRT engine depends on (from :func:`exporters.trt.engine_environment`)
ENV_FIELDS = ("tensorrt", "tensorrt_cuda", "cuda_runtime", "gpu_name", "compute_capability")
#: environment fields a TensorRT-RTX engine depends on (no build GPU: there may be none)
RTX_ENV_FIELDS = ("tensorrt", "tensorrt_cuda", "targets")
#: key fields per flavour (an environment without ``flavour`` is enterprise TensorRT)
FLAVOUR_FIELDS = {"tensorrt": ENV_FIELDS, "rtx": RTX_ENV_FIELDS}


def env_fields(env: Mapping[str, Any]) -> tuple[str, ...]:
    """The key fields of ``env`` (by its ``flavour``)."""
    flavour = env.get("flavour", "tensorrt")
    if flavour not in FLAVOUR_FIELDS:
        raise ValueError(f"unknown TensorRT flavour {flavour!r}")
    return FLAVOUR_FIELDS[flavour]


def engine_key(onnx_sha256: str, env: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The full cache key of an engine: ONNX hash + environment + build options."""
    if not onnx_sha256 or len(onnx_sha256) != 64:
        raise ValueError("onnx_sha256 must be a sha256 hex digest")
    fields = env_fields(env)
    missing = [f for f in fields if f not in env]
    if missing:
        raise ValueError(f"environment lacks {', '.join(missing)}")
    return {
        "format": ENGINE_FORMAT,
        "flavour": env.get("flavour", "tensorrt"),
        "onnx_sha256": onnx_sha256,
        **{f: env[f] for f in fields},
        "build_options": json.loads(json.dumps(dict(options), sort_keys=True, default=str)),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def engine_paths(out_dir: str | Path, onnx_stem: str, key: Mapping[str, Any]) -> tuple[Path, Path]:
    """(engine, sidecar) paths: ``<onnx stem>.<key digest[:12]>.engine`` and ``<that>.json``."""
    d = Path(out_dir)
    name = f"{onnx_stem}.{key_digest(key)[:12]}.engine"
    return d / name, d / f"{name}.json"


def cache_lookup(engine_path: str | Path, sidecar_path: str | Path, key: Mapping[str, Any]) -> tuple[dict | None, str]:
    """(sidecar, reason): the sidecar when the cached engine may be reused, else None and why not."""
    e, s = Path(engine_path), Path(sidecar_path)
    if not e.is_file():
        return None, "no cached engine"
    try:
        side = json.loads(s.read_text())
    except (OSError, ValueError):
        return None, "cached engine has no readable sidecar"
    old = side.get("key") if isinstance(side, dict) else None
    if not isinstance(old, dict):
        return None, "cached engine sidecar has no key"
    diff = key_differences(old, key)
    if diff:
        return None, "cached engine differs in " + ", ".join(diff)
    if side.get("engine_sha256") != sha256_file(e):
        return None, "cached engine file does not match its sidecar (modified or truncated)"
    return side, "all keys match"


def key_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Names of the key fields that differ (build options reported one by one)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k == "build_options":
            a, b = old.get(k) or {}, new.get(k) or {}
            out += [f"build option {o}" for o in sorted(set(a) | set(b)) if a.get(o) != b.get(o)]
        elif old.get(k) != new.get(k):
            out.append(k)
    return out


def environment_mismatch(sidecar: Mapping[str, Any], env: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between the environment an engine was built in and ``env``."""
    built = (sidecar.get("key") or {}) if isinstance(sidecar, Mapping) else {}
    out = []
    flavour = built.get("flavour", "tensorrt")
    if env.get("flavour", "tensorrt") != flavour:
        return [f"TensorRT flavour {flavour} (engine) vs {env.get('flavour', 'tensorrt')} (here)"]
    labels = {
        "tensorrt": "TensorRT-RTX" if flavour == "rtx" else "TensorRT",
        "tensorrt_cuda": "TensorRT CUDA flavour",
        "cuda_runtime": "CUDA runtime",
        "gpu_name": "GPU",
        "compute_capability": "compute capability",
    }
    for f in FLAVOUR_FIELDS.get(flavour, ENV_FIELDS):
        if f == "targets":
            sm = env.get("sm")  # this GPU's compute capability (x10), when there is one
            if sm is not None and int(sm) not in [int(t) for t in built.get("targets") or []]:
                tl = ", ".join(_sm(t) for t in built.get("targets") or [])
                out.append(f"targets SM {tl} (engine) do not include this GPU's SM {_sm(int(sm))}")
        elif f in built and f in env and built[f] != env[f]:
            out.append(f"{labels[f]} {built[f]} (engine) vs {env[f]} (here)")
    if built.get("format") not in (None, ENGINE_FORMAT):
        out.append(f"engine format {built.get('format')} vs {ENGINE_FORMAT}")
    return out


def _sm(t: int) -> str:
    return f"{int(t) // 10}.{int(t) % 10}"
