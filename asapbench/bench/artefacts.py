"""What the exported backends share: the cell's ONNX export and whether TensorRT is usable here.

The onnxruntime runners (:mod:`asapbench.bench.runner_ort`) and the TensorRT runner
(:mod:`asapbench.bench.runner_trt`) both import this module, never each other. exporters/ is imported
inside these functions only.
"""

from __future__ import annotations

from pathlib import Path

from asapbench.bench.backends import Cell


def trt_status() -> tuple[bool, str]:
    """(usable, reason) of TensorRT on this machine (the exporters' own check)."""
    try:
        from exporters.trt import trt_status as status
    except ImportError as exc:
        return False, f"exporters.trt is not importable ({exc})"
    return status()


def export_for(cell: Cell):
    """The cell's ONNX export (cached under ``cache_dir/onnx`` and gated against PyTorch; the cache folder
    is marked as asapbench's, and export_onnx holds its lock while it writes)."""
    from exporters.cache import write_marker
    from exporters.onnx_export import export_onnx

    write_marker(cell.cache_dir)
    return export_onnx(
        cell.model, cell.height, cell.width, Path(cell.cache_dir) / "onnx", cell.precision,
        dynamic=False, batch=cell.batch, check=cell.export_check, seed=cell.seed, reuse=True,
        checkpoint=cell.model.checkpoint_path, progress=cell.progress, option="--cache-dir",
    )
