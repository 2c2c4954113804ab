"""Errors that the CLI turns into one line on stderr and exit code 2.

Anything a user can get wrong (a model name, a resolution, a file) raises :class:`UserError`
with a message that names the problem and the fix. Library callers can catch it like any
``ValueError``.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message names the problem and how to fix it."""


class MissingDependency(UserError):
    """An optional package (onnx, onnxruntime, tensorrt, pycuda) is not installed."""


#: how to install an optional module that is not behind a single extra
INSTALL_HINTS = {
    "onnxruntime": "pip install 'asapbench[cpu]' (or 'asapbench[gpu]' on a machine with an NVIDIA GPU)",
}


def require(module: str, extra: str | None = None, why: str = ""):
    """Import an optional module or raise :class:`MissingDependency` with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised where the package is absent
        top = module.split(".")[0]
        if extra:
            hint = f"pip install 'asapbench[{extra}]'"
        else:
            hint = INSTALL_HINTS.get(top, f"pip install {top}")
        purpose = f" (needed {why})" if why else ""
        raise MissingDependency(f"the Python package '{module}' is not importable{purpose}: {exc}; install it with: {hint}") from exc
