"""Crash-safe file writing: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asapbench.errors import UserError


def _option_of(what: str) -> str:
    """The option that names a folder described as ``what`` ("--out folder" -> "--out")."""
    return what.split()[0] if what.startswith("--") else "--out or --cache-dir"


#: folders :func:`ensure_writable_dir` created in this process (outermost first): a command that fails
#: removes those still empty (:func:`remove_created_if_empty`), so it leaves no empty --out folder behind
CREATED_DIRS: list[Path] = []


def remove_created_if_empty() -> None:
    """Remove the folders this process created that are still empty (innermost first)."""
    for d in reversed(CREATED_DIRS):
        try:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        except OSError:
            pass
    CREATED_DIRS.clear()


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be written there (UserError otherwise).

    ``what`` names the folder in the message; when it starts with the option ("--cache-dir folder"),
    the message names that option as the fix.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a file, not a folder; pass a folder to {_option_of(what)}")
    try:
        missing = [d for d in (p, *p.parents) if not d.exists()]
        p.mkdir(parents=True, exist_ok=True)
        CREATED_DIRS.extend(reversed(missing))
        fd, tmp = tempfile.mkstemp(dir=p, prefix=".writetest-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(p, 0, what) from None
        raise UserError(f"{what} {str(p)!r} is not writable ({exc.strerror or exc}); "
                        f"pass a writable folder to {_option_of(what)}") from None
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing parent), None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
        return st.f_bavail * st.f_frsize
    except OSError:
        return None


def format_bytes(n: float) -> str:
    """A byte count in the unit that suits it: KiB, MiB or GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{max(n, 0) / 2**10:,.0f} KiB"


class DiskFull(UserError):
    """No space left on the device of a folder; the message names the folder and the space needed."""

    def __init__(self, folder: str | os.PathLike, needed: int = 0, what: str = "folder") -> None:
        free = free_bytes(folder)
        need = f"about {format_bytes(needed)} needed" if needed else "more space needed"
        have = f", {format_bytes(free)} free" if free is not None else ""
        super().__init__(f"no space left on the device of {what} {str(folder)!r} ({need}{have}); "
                         f"free space there or pass a folder on another disk to {_option_of(what)}")
        self.folder = str(folder)
        self.needed = needed


def replace_together(out_dir: str | os.PathLike, contents: dict[str, bytes], remove: Sequence[str] = ()) -> dict[str, Path]:
    """Write every ``name -> bytes`` of ``contents`` to a temporary file in ``out_dir``, then rename them
    all to their names (and remove the files named in ``remove``) one right after the other.

    The slow part (writing, fsync) happens before the first rename, so the files are replaced
    together: a crash or a full disk while writing leaves the old set untouched (the temporary files
    are removed; :func:`clean_stale_tmp` removes those a kill -9 left). ENOSPC raises :class:`DiskFull`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmps: dict[str, str] = {}
    try:
        for name, data in contents.items():
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            tmps[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, default_file_mode())
    except BaseException as exc:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        if is_out_of_space(exc):
            raise DiskFull(out, sum(len(d) for d in contents.values()), "--out folder") from None
        raise
    for name, tmp in tmps.items():
        os.replace(tmp, out / name)
    for name in remove:
        try:
            os.unlink(out / name)
        except FileNotFoundError:
            pass
    return {name: out / name for name in contents}


#: a hidden temporary file older than this (seconds) belongs to no live writer
STALE_TMP_S = 3600.0


def clean_stale_tmp(folder: str | os.PathLike, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Remove hidden ``.*.tmp`` / ``.writetest-*`` files in ``folder`` older than ``max_age_s`` (a killed
    writer's leftovers; never read). Returns what was removed."""
    import time

    p = Path(folder)
    removed: list[Path] = []
    if not p.is_dir():
        return removed
    now = time.time()
    for f in p.iterdir():
        if not f.name.startswith(".") or not (f.name.endswith(".tmp") or f.name.startswith(".writetest-")):
            continue
        try:
            if f.is_file() and now - f.stat().st_mtime > max_age_s:
                f.unlink()
                removed.append(f)
        except OSError:
            pass
    return removed


class FolderLock:
    """An exclusive lock on an output folder, held for the life of the run: an OS lock (``flock``) on
    ``.asapbench.lock``, which also records the holder's pid and start time for the refusal message.

    The OS drops the lock when its holder exits, however it exits (kill -9 included), so a lock is never
    stale and never refuses forever: a file left by a killed run, whatever pid it names, is taken over
    (``stale`` holds what it recorded). Two processes that try at once cannot both hold it. A lock held
    by a live process raises UserError naming the folder and that process's pid.
    """

    NAME = ".asapbench.lock"

    def __init__(self, folder: str | os.PathLike, option: str = "--out") -> None:
        self.path = Path(folder) / self.NAME
        self.option = option
        self.stale: dict | None = None
        self.held = False
        self._fd: int | None = None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = os.pread(fd, 4096, 0)
            obj = json.loads(data.decode("utf-8", "replace") or "{}")
        except (OSError, ValueError, RecursionError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def _cannot(self, exc: OSError) -> UserError:
        return UserError(f"cannot lock {self.option} folder {str(self.path.parent)!r} ({exc.strerror or exc}); "
                         f"pass a writable folder to {self.option}")

    def acquire(self) -> FolderLock:
        import fcntl
        import time

        info = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if is_out_of_space(exc):
                    raise DiskFull(self.path.parent, 4096, f"{self.option} folder") from None
                raise self._cannot(exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = self._read(fd)
                for _ in range(20):  # the holder writes its pid right after it locks
                    if other.get("pid"):
                        break
                    time.sleep(0.02)
                    other = self._read(fd)
                os.close(fd)
                raise UserError(
                    f"{self.option} folder {str(self.path.parent)!r} is in use by another asapbench run "
                    f"(pid {other.get('pid', '?')}, started {other.get('started', '?')}); wait for it or pass another "
                    f"{self.option} folder"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise self._cannot(exc) from None
            # the previous holder removes the file when it releases: if it did so after our open, the inode
            # we locked is no longer the lock file, and another process may lock the new one; start again
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                current = False
            if not current:
                os.close(fd)
                continue
            other = self._read(fd)
            if other:  # a holder that ended without releasing (kill -9): the OS dropped its lock
                self.stale = other
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
            except OSError as exc:
                try:  # ours (we hold it): leave no empty lock file behind, e.g. on a full disk
                    os.unlink(self.path)
                except OSError:
                    pass
                os.close(fd)
                if is_out_of_space(exc):
                    raise DiskFull(self.path.parent, 4096, f"{self.option} folder") from None
                raise self._cannot(exc) from None
            self._fd = fd
            self.held = True
            return self
        raise UserError(f"cannot lock {self.option} folder {str(self.path.parent)!r}; pass another {self.option} folder")

    def release(self) -> None:
        if self.held and self._fd is not None:
            self.held = False
            try:  # remove the file while still holding the lock (acquire checks that it locked the current file)
                if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


#: the largest JSON file a command reads back (run.json, bench.json, sidecars are a few KiB)
MAX_JSON_BYTES = 64 * 2**20


class BadJsonFile(UserError):
    """A JSON file that cannot be read back; ``why`` is the short reason ("nested too deeply", ...)."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str = "", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed content of a JSON file; :class:`BadJsonFile` (a UserError: one line naming the file, the
    problem and ``fix``; ``why`` the short reason, "missing" for no file) when it cannot be read, is not a
    regular file (a FIFO, or a link to a device such as /dev/zero, is refused before anything is read), is
    larger than ``max_bytes``, is not UTF-8 JSON or is nested too deeply to parse (a hand-edited or hostile
    file: Python's parser raises RecursionError beyond about 1000 levels)."""
    import stat

    p = Path(path)
    tail = f"; {fix}" if fix else ""

    def bad(text: str, why: str | None = None) -> BadJsonFile:
        return BadJsonFile(f"{what} {str(p)!r} {text}{tail}", why or text)

    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise bad("does not exist", "missing") from None
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad("is not a regular file", "not a regular file")
        if st.st_size > max_bytes:
            raise bad(f"is {format_bytes(st.st_size)}, more than the {format_bytes(max_bytes)} such a file may hold")
        chunks, n = [], 0
        while n <= max_bytes:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if n > max_bytes:
        raise bad(f"holds more than the {format_bytes(max_bytes)} such a file may hold")
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("is not UTF-8 text") from None
    except RecursionError:
        raise bad("is nested too deeply to be a file asapbench wrote") from None
    except ValueError as exc:
        raise bad(f"is not valid JSON ({exc})", "not valid JSON") from None


def default_cache_dir() -> Path:
    """Where ONNX exports, TensorRT engines, OpenVINO blobs and compiled kernels are cached: $ASAPBENCH_CACHE, else
    $XDG_CACHE_HOME/asapbench, else ~/.cache/asapbench."""
    env = os.environ.get("ASAPBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asapbench"


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (mkstemp makes files private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it to ``path``.

    The final name only ever holds a complete file; on any failure the temporary file is removed.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file (fsynced) and ``os.replace``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# full disks
# ----------------------------------------------------------------------------------------------
#: what torch's zip writer (and others) say, as RuntimeError, when a write came up short on a full disk
_OUT_OF_SPACE_TEXT = ("no space left", "file write failed", "disk quota", "unexpected pos")


def tensor_nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists and tuples): about what ``torch.save`` writes."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_nbytes(v) for v in obj)
    return 0


def is_out_of_space(exc: BaseException, folder: str | os.PathLike | None = None, needed: int | None = None) -> bool:
    """Whether ``exc`` (an OSError, or the RuntimeError ``torch.save`` raises) means the disk is full.

    ENOSPC/EDQUOT, a message that says so, or (given ``folder`` and ``needed``) less free space there
    than ``needed`` bytes after a failed write.
    """
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    if any(t in str(exc).lower() for t in _OUT_OF_SPACE_TEXT):
        return True
    if folder is not None and needed is not None:
        free = free_bytes(folder)
        return free is not None and free < needed
    return False
