"""asapbench: honest deployment benchmarks of ASAP-Net, pix2pixHD and SPADE generators.

Public API (torch only; onnx/onnxruntime/tensorrt are imported by the functions that need them):

- :func:`create_generator`, :func:`list_models`, :func:`load_generator`
- :func:`count_params`, :func:`count_macs`
"""

from __future__ import annotations

__version__ = "0.1.0"

from asapbench.errors import UserError

__all__ = [
    "UserError",
    "create_generator",
    "list_models",
    "configure_for_resolution",
    "load_generator",
    "count_params",
    "count_macs",
    "__version__",
]


def __getattr__(name):  # lazy: keep `import asapbench` light (torch and the generators load on first use)
    if name in ("create_generator", "list_models", "configure_for_resolution"):
        from asapbench import registry

        return getattr(registry, name)
    if name == "load_generator":
        from asapbench.checkpoint import load_generator

        return load_generator
    if name in ("count_params", "count_macs"):
        from asapbench import counting

        return getattr(counting, name)
    raise AttributeError(name)
