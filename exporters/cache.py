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
import re
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
    side, why = read_json(s)
    if why:
        return None, f"cached engine has no readable sidecar ({why})"
    problem = engine_sidecar_problem(side)
    if problem:
        return None, f"cached engine sidecar is malformed ({problem})"
    old = side["key"]
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


# --------------------------------------------------------------------------------------------
# JSON sidecars: read safely, check their shape
# --------------------------------------------------------------------------------------------
#: a sidecar larger than this is not one of ours (the largest, an fp16 engine's, holds a few hundred KiB)
MAX_SIDECAR_BYTES = 16 * 2**20


def read_json(path: str | Path, max_bytes: int = MAX_SIDECAR_BYTES) -> tuple[Any, str | None]:
    """(object, None) from the JSON file at ``path``, or (None, why not): :func:`asapbench.fsutil.read_json`
    (regular files only, at most ``max_bytes``, valid and not too deeply nested JSON) for a caller that
    treats an unusable sidecar as a cache miss. Never raises for the file's sake."""
    from asapbench.fsutil import BadJsonFile
    from asapbench.fsutil import read_json as read_json_file

    try:
        return read_json_file(path, "sidecar", max_bytes=max_bytes), None
    except BadJsonFile as exc:
        return None, exc.why


def _shape_problem(side: Any, fields: Mapping[str, Any]) -> str | None:
    if not isinstance(side, dict):
        return f"a JSON {type(side).__name__}, not an object"
    for name, types in fields.items():
        if name not in side:
            return f"no {name!r}"
        v = side[name]
        if types is not None and (not isinstance(v, types) or isinstance(v, bool)):
            return f"{name!r} is a {type(v).__name__}"
    return None


def _int_list(v: Any, length: int | None = None) -> bool:
    return (isinstance(v, list) and (length is None or len(v) == length)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v))


def _io_problem(v: Any, name: str) -> str | None:
    if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not isinstance(v.get("shape"), list):
        return f"{name!r} is not {{name, shape}}"
    if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in v["shape"]):
        return f"{name!r} has a malformed shape"
    return None


#: fields an ONNX sidecar must have, with their types (None: any)
ONNX_SIDECAR_FIELDS = {"key": dict, "onnx_sha256": str, "onnx_bytes": int, "model": str, "preset": None,
                       "resolution": list, "precision": str, "input": dict, "output": dict}


def onnx_sidecar_problem(side: Any) -> str | None:
    """What is wrong with the shape of an ONNX sidecar (None when every field the code reads is sound)."""
    problem = _shape_problem(side, ONNX_SIDECAR_FIELDS)
    if problem:
        return problem
    for io in ("input", "output"):
        problem = _io_problem(side[io], io)
        if problem:
            return problem
    if not _int_list(side["resolution"], 2):
        return "'resolution' is not [H, W]"
    par = side.get("parity")
    if par is not None:
        if not isinstance(par, dict):
            return "'parity' is not an object"
        samples = par.get("samples", [])
        if not isinstance(samples, list) or not all(isinstance(s, dict) and _int_list(s.get("shape"), 4) for s in samples):
            return "'parity.samples' is malformed"
    return None


#: fields an engine sidecar must have, with their types
ENGINE_SIDECAR_FIELDS = {"key": dict, "engine_sha256": str, "engine_bytes": int, "build_seconds": (int, float)}


def engine_sidecar_problem(side: Any) -> str | None:
    """What is wrong with the shape of an engine sidecar (None when every field the code reads is sound)."""
    problem = _shape_problem(side, ENGINE_SIDECAR_FIELDS)
    if problem:
        return problem
    key = side["key"]
    if "targets" in key and not _int_list(key["targets"]):
        return "'key.targets' is not a list of compute capabilities"
    if not isinstance(key.get("flavour", "tensorrt"), str):
        return "'key.flavour' is not a string"
    for name in ("flavour_label", "layer_precisions_text", "note"):
        if name in side and side[name] is not None and not isinstance(side[name], str):
            return f"{name!r} is not a string"
    return None


# --------------------------------------------------------------------------------------------
# The cache folder: its marker, what asapbench wrote there, and its lock
# --------------------------------------------------------------------------------------------
#: the file that marks a folder as an asapbench cache (written whenever asapbench uses a cache folder)
MARKER = ".asapbench-cache"
#: the cache's sub-folders: ONNX exports, TensorRT engines, OpenVINO compiled models and compiled CPU kernels
SUBFOLDERS = ("onnx", "engines", "openvino", "kernels")
_STEM = r"[A-Za-z0-9][A-Za-z0-9_.+-]*-\d+x\d+-(?:fp32|fp16)(?:-labels)?(?:-b\d+)?(?:-dyn)?"
_ENGINE = _STEM + r"\.[0-9a-f]{12}\.engine"
#: names asapbench writes in each cache sub-folder (full match)
_OWN_NAMES = {
    "onnx": re.compile(rf"{_STEM}(?:\.onnx|\.json|\.parity-failed\.json)"),
    "engines": re.compile(rf"{_ENGINE}(?:\.json)?|timing-trt[A-Za-z0-9.-]*\.cache"),
    "engines/runtime-cache": re.compile(rf"{_STEM}\.[0-9a-f]{{12}}\.[A-Za-z0-9.-]+\.rtcache"),
    "kernels": re.compile(r"pixelwise-[0-9a-f]{16}\.so"),  # asapbench.models.fused_kernel
}
#: OpenVINO's compiled-model cache of one export (``openvino/<stem>.<sha12>/``, its CACHE_DIR): the blobs it writes
_OPENVINO_DIR = re.compile(rf"openvino/{_STEM}\.[0-9a-f]{{12}}")
_OPENVINO_BLOB = re.compile(r"[0-9]+\.blob")
#: a temporary file of an atomic write (``.<final name>.<random>.tmp``) or a write test
_TMP = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp|\.writetest-[A-Za-z0-9_]+")


def is_own_file(rel: str) -> bool:
    """Whether the file at ``rel`` (a path relative to the cache folder, ``/``-separated) is one asapbench
    writes there: an export, an engine, their sidecars, a timing or runtime cache, or a temporary file
    of one of them."""
    folder, _, name = rel.rpartition("/")
    pattern = _OPENVINO_BLOB if _OPENVINO_DIR.fullmatch(folder) else _OWN_NAMES.get(folder)
    if pattern is None:
        return False
    m = _TMP.fullmatch(name)
    if m:
        return m.group("name") is None or bool(pattern.fullmatch(m.group("name")))
    return bool(pattern.fullmatch(name))


def scan_cache(root: str | Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(asapbench's files, other files) under ``root`` as (relative path, bytes), sorted; the marker is in
    neither. Links are never followed (a link is listed as itself, never as asapbench's: clearing never
    touches what it points to); a linked or foreign sub-folder is not entered."""
    import os
    import stat as _stat

    root = Path(root)
    own: list[tuple[str, int]] = []
    other: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if (rel in _OWN_NAMES or rel == "openvino" or _OPENVINO_DIR.fullmatch(rel)) and not os.path.islink(os.path.join(dirpath, d)):
                keep.append(d)
            else:  # a foreign folder (or a link to one) counts as one foreign entry, not entered
                other.append((rel + "/", 0))
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if rel == MARKER:
                continue
            full = os.path.join(dirpath, f)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            mine = _stat.S_ISREG(st.st_mode) and is_own_file(rel)
            (own if mine else other).append((rel, st.st_size if _stat.S_ISREG(st.st_mode) else 0))
    return sorted(own), sorted(other)


def has_marker(root: str | Path) -> bool:
    """Whether ``root`` holds the asapbench cache marker (a regular file with asapbench's content)."""
    obj, why = read_json(Path(root) / MARKER, max_bytes=4096)
    return why is None and isinstance(obj, dict) and obj.get("asapbench_cache") == 1


def write_marker(root: str | Path) -> bool:
    """Mark ``root`` as an asapbench cache (atomically; a no-op when it is marked already). False when it
    cannot be written (a read-only or full disk: the cache still works, ``cache --clear`` then refuses it
    unless it holds only asapbench's files)."""
    from asapbench.fsutil import atomic_write_json

    root = Path(root)
    if has_marker(root):
        return True
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / MARKER, {
            "asapbench_cache": 1,
            "what": "asapbench's cache of ONNX exports (onnx/) and TensorRT engines (engines/)",
            "clear": "asapbench cache --clear deletes only the files asapbench wrote here",
        })
    except OSError:
        return False
    return True


def cache_root_of(folder: str | Path) -> Path | None:
    """The marked cache folder that ``folder`` (an export or engine folder) belongs to, or None."""
    p = Path(folder)
    if p.name in SUBFOLDERS and has_marker(p.parent):
        return p.parent
    return None


def lock_holders(path: str | Path) -> list[str]:
    """'pid N (command line)' of the processes holding an flock on ``path`` (Linux ``/proc/locks``; [] elsewhere)."""
    import os

    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "FLOCK" not in parts or "->" in parts:
            continue
        i = parts.index("FLOCK")
        if len(parts) > i + 4 and parts[i + 4] == want and parts[i + 3] != str(os.getpid()):
            pid = parts[i + 3]
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            out.append(f"pid {pid}" + (f" ({cmd[:80]})" if cmd else ""))
    return list(dict.fromkeys(out))


class CacheBusy(Exception):
    """The cache folder is locked by another process."""


class CacheLock:
    """An OS lock (``fcntl.flock``) on the cache folder itself, held for an operation's life.

    ``run`` and the export/engine writers hold it shared while they read or write entries; ``cache
    --clear`` takes it exclusively and refuses when it cannot. Locking the folder (not a file in it)
    needs no disk space, leaves nothing behind and works on a read-only cache. The lock goes with the
    process: a killed run holds nothing. Where ``fcntl`` is missing the lock is a no-op.
    """

    def __init__(self, root: str | Path, exclusive: bool = False) -> None:
        self.root = Path(root)
        self.exclusive = exclusive
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> CacheLock:
        import os

        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return self
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            holders = lock_holders(self.root)
            raise CacheBusy("; ".join(holders) or "another process") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        import os

        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the descriptor drops the lock

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def use_cache(root: str | Path) -> CacheLock | None:
    """Mark ``root`` as an asapbench cache (creating it) and take the shared lock on it; None when the
    folder cannot be created or locked (read-only: nothing can be written there anyway)."""
    write_marker(root)
    try:
        return CacheLock(root).acquire()
    except OSError:
        return None


class entry_lock:
    """Context manager: the shared cache lock while an entry is written into ``folder`` (a sub-folder of
    a marked cache); nothing for any other folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = folder
        self.lock: CacheLock | None = None

    def __enter__(self) -> entry_lock:
        root = cache_root_of(self.folder)
        if root is not None:
            try:
                self.lock = CacheLock(root).acquire()
            except OSError:
                self.lock = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()
