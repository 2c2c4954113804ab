"""TensorRT runner: an engine built from the cell's ONNX export (:mod:`exporters.trt`, either flavour:
enterprise TensorRT or TensorRT for RTX, whichever is installed), run with ``execute_async_v3`` on torch's
CUDA stream, optionally replayed as a CUDA graph. The row's provider names the flavour and its version;
TensorRT-RTX engines are warmed up until their just-in-time kernels are compiled (the row's note says so)."""

from __future__ import annotations

from pathlib import Path

import torch

from asapbench.bench.artefacts import export_for, trt_status
from asapbench.bench.backends import Backend, Runner


class TensorRTRunner(Runner):
    @classmethod
    def availability(cls, backend: Backend, device: str) -> str | None:
        ok, reason = trt_status()
        return None if ok else f"TensorRT is not usable: {reason}"

    def prepare(self) -> None:
        from exporters.trt import build_engine

        # built for this machine's GPU: a timing run needs no portable engine, and an RTX card outside the
        # portable set (e.g. SM 7.5) would refuse one
        self.say("exporting")
        # ASAP-Net's Winograd low-res convs (lowres_conv) are a CPU form, measured with onnxruntime and torch on
        # the CPU: TensorRT gets the plain convs, which it runs with its own (GPU) convolution kernels
        model = self.cell.model
        form = getattr(model, "lowres_conv", "direct")
        if form != "direct":
            model.lowres_conv = "direct"
        try:
            exported = export_for(self.cell)
        finally:
            if form != "direct":
                model.lowres_conv = form
        from exporters.cache import entry_lock

        engines = Path(self.cell.cache_dir) / "engines"
        with entry_lock(engines):  # the cache's shared lock: `cache --clear` cannot delete a build in progress
            self.engine = build_engine(exported.onnx_path, out_dir=engines,
                                       progress=self.cell.progress, flavour=self.cell.trt, targets="current",
                                       option="--cache-dir")

    def open(self) -> None:
        from exporters.trt import TrtRunner

        cell = self.cell
        self.trt = TrtRunner(self.engine.engine_path, flavour=self.cell.trt)
        # the engine's own input dtype is applied by bind: float32, or int32 for the label map (--input labels)
        self.trt.bind(cell.x.to(device="cuda", dtype=torch.float32 if cell.x.is_floating_point() else cell.x.dtype))
        self.note = self.trt.note
        self.graph = None
        if cell.cuda_graph:
            # one plain enqueue first (TensorRT sets up lazily), then capture the enqueue on torch's capture stream
            self.trt.infer_bound()
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.trt.infer_bound()
            self.note = "; ".join(n for n in (self.note, "CUDA graph replay of execute_async_v3") if n)
        self.provider = self.trt.label
        self.info = {"engine": str(self.engine.engine_path), "flavour": self.trt.flavour.name}

    def run(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.trt.infer_bound()

    def run_e2e(self) -> object:
        return self.trt.infer(self.cell.x.numpy())

    def close(self) -> None:
        self.graph = None
        trt = self.__dict__.pop("trt", None)
        if trt is not None:
            trt.close()
