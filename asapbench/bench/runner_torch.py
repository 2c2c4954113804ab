"""PyTorch runners: eager (``torch``) and compiled (``torch-compile``), optionally as a CUDA graph.

Reduced precision casts the whole model and its input (``model.to(dtype)``: weights, activations and
InstanceNorm in that dtype; torch's norm kernels accumulate their statistics in fp32): fp16 on CUDA, bf16
on the CPU. The cast is used rather than ``torch.autocast('cpu', dtype=torch.bfloat16)``, which recasts the
weights every call (measured slower: results/), and autocast cannot run
ASAP-Net's eager pixelwise stream (``torch.bmm(..., out=)`` into its fp32 buffers). A bf16 cell is gated
before it is timed (:meth:`TorchRunner.gate`): its output on the cell's input against the fp32 model's
must meet the fp16 parity criteria (exporters/validate.py ``PARITY_CRITERIA``: PSNR >= 40 dB, peak-to-peak
2.0, no NaN/Inf). When the whole-model cast fails and the model has a mixed variant
(``Generator.mixed_precision_variant``: ASAP-Net's pixelwise stream in bf16, low-res stream in fp32), that
variant is gated and, if it passes, timed, and the row's note says which ran and what the whole cast scored
(:func:`cast_candidates`); when none passes, :class:`~asapbench.bench.backends.GateFailed` (an ``error`` row
with every candidate's numbers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from asapbench.bench.backends import TORCH_DTYPES, GateFailed, Runner

#: precisions gated against fp32 before timing, and the PARITY_CRITERIA entry that judges each
GATED = {"bf16": "fp16"}


class TorchRunner(Runner):
    """A private copy of the generator on the cell's device and dtype (made inside the memory probe, so
    the weights count and the CPU fp32 model the other backends export stays untouched)."""

    @property
    def mem(self) -> str:
        return "cuda_torch" if self.cell.device == "cuda" else "cpu"

    def prepare(self) -> None:
        """For a gated precision: the fp32 model's output on the cell's input (outside the memory probe)."""
        if self.cell.precision in GATED:
            self.say("fp32 reference")
            with torch.inference_mode():
                self.ref = self.cell.model(self.cell.x).float().numpy()

    def open(self) -> None:
        cell = self.cell
        self.dev = torch.device(cell.device)
        self.dtype = TORCH_DTYPES[cell.precision]
        self.state: dict[str, Any] = {}
        self.graph = None
        self.provider = cell.device
        self.threads = torch.get_num_threads()
        failed: list[tuple[str, dict[str, Any]]] = []
        for make in cast_candidates(cell.model, cell.precision):
            made = make()
            if made is None:
                continue
            self.policy, model, self.in_dtype = made
            self.model = model.to(device=self.dev).eval()
            self.x_dev = self._to_device(cell.x)
            self._forward_fn()
            if cell.precision not in GATED:
                return
            rec = self.gate()
            if rec["passed"]:
                self._note_gate(rec, failed)
                return
            failed.append((self.policy, rec))
            for name in ("fwd", "model", "x_dev"):
                self.__dict__.pop(name, None)
        prec = cell.precision
        what = "; ".join((f"{policy}: " if len(failed) > 1 else "") + f"{'; '.join(rec['failures'])} ({_nums(rec)})"
                         for policy, rec in failed)
        raise GateFailed(f"{prec} parity gate failed against fp32 torch on the same input: {what}; not timed; "
                         "use --precision fp32 for this model")

    def _forward_fn(self) -> None:
        """:attr:`fwd` for :attr:`model`: eager, torch.compile, or a captured CUDA graph."""
        cell = self.cell
        self.fwd: Callable[[torch.Tensor], torch.Tensor] = self.model
        if cell.backend == "torch-compile":
            mode = "reduce-overhead" if cell.cuda_graph else None
            self.fwd = torch.compile(self.model, mode=mode)
            # a gated precision's first forward is the gate's, so compilation happens there
            when = (f"in the {cell.precision} gate's forward, before warm-up" if cell.precision in GATED
                    else "during warm-up")
            self.note = f"torch.compile(mode={mode or 'default'}); compilation happens {when}"
        elif cell.cuda_graph:
            self._capture()

    def gate(self) -> dict[str, Any]:
        """Judge the output of :attr:`fwd` on the cell's input against the fp32 reference (:meth:`prepare`)
        and return the record (``passed``, ``failures``, PSNR, ...); it is also kept in ``info["gate"]``."""
        from exporters.validate import judge_outputs

        prec = self.cell.precision
        self.say(f"{prec} parity gate")
        with torch.inference_mode():
            got = self.fwd(self.x_dev).float().cpu().numpy()
        rec = judge_outputs(self.ref, got, GATED[prec])
        self.info["gate"] = {k: rec[k] for k in ("passed", "psnr_db", "max_abs_err", "nonfinite", "criterion")}
        self.info["gate"]["policy"] = self.policy
        return rec

    def _note_gate(self, rec: dict[str, Any], failed: list[tuple[str, dict[str, Any]]]) -> None:
        """The row's note for a passed gate: what ran in reduced precision, the gate's numbers, and the
        candidates that failed before it."""
        prec = self.cell.precision
        how = f"{prec}: {self.policy}"
        if failed:
            how += " (" + "; ".join(f"{p} failed the gate: {', '.join(r['failures'])}" for p, r in failed) + ")"
        gate = f"gate vs fp32 torch passed: {_nums(rec)}" + ("; reference output degenerate" if rec["degenerate"] else "")
        self.note = "; ".join(n for n in (self.note, how, gate) if n)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """The input on the cell's device: float inputs in the dtype the model takes, the integer label map as it is."""
        return x.to(device=self.dev, dtype=self.in_dtype if x.is_floating_point() else x.dtype)

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
        if out.dtype == torch.bfloat16:  # numpy has no bfloat16: the host gets float32 (part of end-to-end)
            out = out.float()
        return out.cpu().numpy()

    def close(self) -> None:
        for name in ("state", "graph", "static_out", "static_x", "fwd", "model", "x_dev", "ref"):
            self.__dict__.pop(name, None)


def cast_candidates(model: torch.nn.Module, precision: str) -> list[Callable[[], tuple[str, torch.nn.Module, torch.dtype] | None]]:
    """How ``model`` may run in ``precision``, in the order to try them: each a function that makes
    ``(what, model copy, input dtype)`` (or None). First the whole model and its input cast to the dtype;
    for a gated precision, then the model's mixed variant (``mixed_precision_variant``), if it has one,
    which takes the input in the model's own dtype. Made one at a time, so one copy is held at once."""
    dtype = TORCH_DTYPES[precision]
    name = str(dtype).removeprefix("torch.")

    def whole():
        return f"model and input cast to {name} (not autocast)", copy.deepcopy(model).to(dtype), dtype

    def mixed():
        variant = model.mixed_precision_variant(dtype) if hasattr(model, "mixed_precision_variant") else None
        if variant is None:
            return None
        what, m = variant
        return what, m, m.float_dtype()

    return [whole, mixed] if precision in GATED else [whole]


def _nums(rec: dict[str, Any]) -> str:
    return f"PSNR {rec['psnr_db']:.2f} dB, max |err| {_fmt(rec['max_abs_err'])}, NaN/Inf {rec['nonfinite']}"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"
