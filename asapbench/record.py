"""One result record: :class:`BenchRow`, a cell of a sweep. A leaf (standard library only): the sweep
(:mod:`asapbench.bench.sweep`) makes rows, :mod:`asapbench.report` renders and reads them; neither
imports the other for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BenchRow:
    """One cell of a sweep: a model at one resolution on one backend/precision/device.

    ``ms_*`` are per forward call (one batch), measured with the input already on the device
    (GPU-only time); ``e2e_ms_*`` go from a host float32 tensor to a host array. Empty (None) where
    the cell did not produce a time (``status`` != ``ok``); ``note`` says why.
    """

    model: str
    preset: str = ""
    overrides: str = ""  # constructor overrides on top of the preset, e.g. "scale=64"
    checkpoint: str = ""
    backend: str = ""  # torch, torch-compile, onnxruntime, onnxruntime-trt, tensorrt, openvino
    provider: str = ""  # what actually ran: e.g. CUDAExecutionProvider, "cpu", "cuda"
    precision: str = "fp32"
    device: str = "cpu"
    cuda_graph: bool = False
    height: int = 0
    width: int = 0
    batch: int = 1
    input_nc: int | None = None  # channels of the model's input (label one-hot + instance edges)
    input: str = "onehot"  # what the model took: onehot (official float tensor) or labels (int32 label map, --input labels)
    input_bytes: int | None = None  # bytes of one image's host input (what end-to-end time copies in)
    params: int | None = None
    macs: int | None = None  # per image (counted at batch 1), asapbench.counting.count_macs
    gmacs: float | None = None  # per image, 1e9 MACs
    ms_median: float | None = None
    ms_mean: float | None = None
    ms_p90: float | None = None
    ms_p99: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    ms_std: float | None = None
    cov: float | None = None
    iters: int | None = None
    warmup_iters: int | None = None
    timed_s: float | None = None
    img_per_s: float | None = None
    e2e_ms_median: float | None = None
    e2e_ms_mean: float | None = None
    e2e_iters: int | None = None
    peak_mem_mib: float | None = None
    mem_kind: str = ""
    threads: int | None = None
    status: str = "ok"
    note: str = ""
    cell_s: float | None = None  # wall seconds the whole cell took (build, export, warm-up, timing)
    # achieved rate against the machine's GEMM peak in the backend's library at the row's precision (CPU rows)
    gflops: float | None = None  # 2 x MACs x batch / ms_median
    peak_gflops: float | None = None  # the peak measured at the start of the run (bench.json: environment.peaks)
    peak_fraction: float | None = None  # gflops / peak_gflops
    # environment columns (the full snapshot is in bench.json)
    cpu_model: str = ""
    gpu_name: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    torch_version: str = ""
    onnxruntime_version: str = ""
    tensorrt_version: str = ""
    git_sha: str = ""
    timestamp: str = ""
    # raw per-run times (ms) of the timed and end-to-end runs: bench.json only (not CSV columns)
    samples_ms: list[float] | None = field(default=None, compare=False)
    e2e_samples_ms: list[float] | None = field(default=None, compare=False)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def res(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def ms_per_image(self) -> float | None:
        return None if self.ms_median is None else self.ms_median / max(1, self.batch)

    @property
    def e2e_ms_per_image(self) -> float | None:
        return None if self.e2e_ms_median is None else self.e2e_ms_median / max(1, self.batch)

    @property
    def machine(self) -> str:
        """The GPU name for CUDA rows, else the CPU model."""
        if self.device == "cuda" and self.gpu_name:
            return self.gpu_name
        return self.cpu_model or self.device

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
