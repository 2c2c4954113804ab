"""onnxruntime runners (CPU, CUDA and TensorRT execution providers) on the parity-gated ONNX export.

onnxruntime and the exporters are imported inside these functions only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asapbench.bench.backends import Backend, Cell, Runner, Unsupported


def ort_providers() -> list[str]:
    """onnxruntime's available execution providers ([] when onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


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


def input_dtype(sidecar: dict | None, x: torch.Tensor | None = None) -> torch.dtype:
    """The dtype the exported graph takes (fp32 for our exports, which keep fp32 inputs; an integer
    input ``x``, the label map of ``--input labels``, keeps its own dtype)."""
    if x is not None and not x.is_floating_point():
        return x.dtype
    for key in ("input_dtype", "io_dtype"):
        v = (sidecar or {}).get(key)
        if isinstance(v, str) and "16" in v:
            return torch.float16
    return torch.float32


class OnnxRuntimeRunner(Runner):
    """An onnxruntime session on the provider the backend table names for the device.

    CPU: a numpy input kept by the session wrapper; CUDA/TensorRT: torch CUDA tensors bound by IO binding.
    """

    @classmethod
    def availability(cls, backend: Backend, device: str) -> str | None:
        provs = ort_providers()
        if not provs:
            return "onnxruntime is not installed (pip install 'asapbench[cpu]', or 'asapbench[gpu]' for CUDA)"
        want = backend.providers[device]
        if want == "TensorrtExecutionProvider":
            from asapbench.bench.runner_trt import trt_status

            ok, reason = trt_status()
            if not ok:
                return f"TensorrtExecutionProvider needs the TensorRT libraries: {reason}"
        if want not in provs:
            hint = " (install onnxruntime-gpu in place of onnxruntime)" if device == "cuda" else ""
            return f"onnxruntime has no {want}{hint}; available: {', '.join(provs)}"
        return None

    def prepare(self) -> None:
        self.say("exporting")
        self.exported = export_for(self.cell)

    def open(self) -> None:
        from exporters.ort import OrtRunner, ProviderUnavailable

        cell = self.cell
        ep = self.backend.providers[cell.device]
        provider = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                    "TensorrtExecutionProvider": "tensorrt"}[ep]
        try:
            self.session = OrtRunner(self.exported.onnx_path, provider=provider, threads=cell.threads,
                                     cuda_graph=cell.cuda_graph)
        except ProviderUnavailable as exc:
            raise Unsupported(f"onnxruntime did not load {ep}: {exc}") from None
        providers = list(self.session.providers or [])
        if not providers or providers[0] != ep:
            raise Unsupported(f"onnxruntime asked for {ep} but runs on {providers or 'nothing'}; not timed")
        dtype = input_dtype(self.exported.sidecar, cell.x)
        self.session.bind(cell.x.to(dtype=dtype) if cell.device == "cpu" else cell.x.to(device="cuda", dtype=dtype))
        if cell.device == "cuda" and cell.cuda_graph:
            self.note = "CUDA graph (onnxruntime enable_cuda_graph)"
        self.x_np = cell.x.to(dtype).numpy()
        self.provider = providers[0]
        self.threads = self.session.threads or cell.threads
        self.info = {"providers": providers, "onnx": str(self.exported.onnx_path)}

    def run(self) -> None:
        self.session.infer_bound()

    def run_e2e(self) -> object:
        return self.session.infer(self.cell.x.numpy().astype(self.x_np.dtype, copy=False))

    def close(self) -> None:
        session = self.__dict__.pop("session", None)
        if session is not None:
            session.close()
