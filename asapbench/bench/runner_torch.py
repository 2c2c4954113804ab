"""PyTorch runners: eager (``torch``) and compiled (``torch-compile``), optionally as a CUDA graph."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from asapbench.bench.backends import TORCH_DTYPES, Runner


class TorchRunner(Runner):
    """A private copy of the generator on the cell's device and dtype (made inside the memory probe, so
    the weights count and the CPU fp32 model the other backends export stays untouched)."""

    @property
    def mem(self) -> str:
        return "cuda_torch" if self.cell.device == "cuda" else "cpu"

    def open(self) -> None:
        cell = self.cell
        self.dev = torch.device(cell.device)
        self.dtype = TORCH_DTYPES[cell.precision]
        self.model = copy.deepcopy(cell.model).to(device=self.dev, dtype=self.dtype).eval()
        self.x_dev = self._to_device(cell.x)
        self.fwd: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.state: dict[str, Any] = {}
        self.graph = None
        if cell.backend == "torch-compile":
            mode = "reduce-overhead" if cell.cuda_graph else None
            self.fwd = torch.compile(self.model, mode=mode)
            self.note = f"torch.compile(mode={mode or 'default'}); compilation happens during warm-up"
        elif cell.cuda_graph:
            self._capture()
        self.provider = cell.device
        self.threads = torch.get_num_threads()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """The input on the cell's device: float inputs in the cell's dtype, the integer label map as it is."""
        return x.to(device=self.dev, dtype=self.dtype if x.is_floating_point() else x.dtype)

    def _capture(self) -> None:
        """Capture one forward as a CUDA graph after 3 eager runs on a side stream."""
        self.static_x = self.x_dev.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self.model(self.static_x)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_out = self.model(self.static_x)
        self.note = "CUDA graph replay (captured after 3 eager runs)"

    def run(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        with torch.inference_mode():
            self.state["out"] = self.fwd(self.x_dev)

    def run_e2e(self) -> object:
        x = self._to_device(self.cell.x)
        if self.graph is not None:
            self.static_x.copy_(x)
            self.graph.replay()
            return self.static_out.cpu().numpy()
        with torch.inference_mode():
            out = self.fwd(x)
        return out.cpu().numpy()

    def close(self) -> None:
        for name in ("state", "graph", "static_out", "static_x", "fwd", "model", "x_dev"):
            self.__dict__.pop(name, None)
